"""GPTQ (Frantar et al. 2022): quantize the input rows of a weight one at a time, pushing each row's
rounding error onto the rows not yet quantized, weighted by the inverse Hessian H = X^T X of the
layer's calibration inputs X.

Hessians come from one pass of the float model over calibration tokens (every layer sees the float
model's activations, not those of already-quantized layers: simpler, and the usual result is close).
The per-weight solve is NumPy float64: fine for the small models this project trains on a CPU;
a 1B model would want it jitted.
"""

from __future__ import annotations

import math
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm import ops
from jaxlm.quant import formats
from jaxlm.quant.formats import Scheme
from jaxlm.quant.model import block_weights, weight_axes
from jaxlm.quant.qweight import QuantizedWeight, to_matrix


class _Sink:
    """Host-side accumulators, held opaquely so that NNX treats them as a static attribute."""

    def __init__(self):
        self.sums: dict = defaultdict(lambda: defaultdict(float))  # key -> layer -> sum of x^T x
        self.counts: dict = defaultdict(lambda: defaultdict(int))  # key -> layer -> rows seen


class _Recorder(nnx.Module):
    """Stands in for a weight during calibration: accumulates X^T X of its inputs on the host."""

    def __init__(self, weight: nnx.Param, key: tuple, n_in: int, sink: _Sink):
        self.weight = weight
        self.layer = nnx.Variable(jnp.arange(weight.shape[0]))  # sliced to a scalar by the layer scan
        self.key, self.n_in, self.sink = key, n_in, sink

    def __getitem__(self, key):
        return self

    def dense(self, equation, x, dtype):
        k = math.prod(x.shape[x.ndim - self.n_in:])

        def accumulate(layer, xs):
            xs = np.asarray(xs, np.float64).reshape(-1, k)
            self.sink.sums[self.key][int(layer)] += xs.T @ xs
            self.sink.counts[self.key][int(layer)] += xs.shape[0]

        jax.debug.callback(accumulate, self.layer[...], x)
        return ops.dense(equation, x, self.weight[...], dtype)


def collect_hessians(model, token_batches) -> dict:
    """Run the model over token batches (each (B, T) int) -> {(group, name): (L, K, K) mean of x x^T}."""
    sink = _Sink()
    originals = []
    for gi, name, parent, attr, (n_in, _) in block_weights(model):
        w = getattr(parent, attr)
        originals.append((parent, attr, w))
        setattr(parent, attr, _Recorder(w, (gi, name), n_in, sink))
    try:
        forward = nnx.jit(lambda m, t: m(t))  # one compile for equal-shaped batches; callbacks run per layer
        for tokens in token_batches:
            jax.block_until_ready(forward(model, jnp.asarray(tokens)))
        jax.effects_barrier()
    finally:
        for parent, attr, w in originals:
            setattr(parent, attr, w)
    out = {}
    for key, per_layer in sink.sums.items():
        out[key] = np.stack([per_layer[i] / max(sink.counts[key][i], 1) for i in range(len(per_layer))])
    return out


def gptq_matrix(w: np.ndarray, hessian: np.ndarray, scheme: Scheme, damp: float = 0.01, block: int = 128):
    """w (K, N), hessian (K, K) -> (codes (K, N) uint8 unpacked, scale (K/g, N) f16, zero or None)."""
    w = np.array(w, np.float64)  # (K, N): row k is input k
    k_dim, n_dim = w.shape
    g = scheme.group_for(k_dim)
    h = np.array(hessian, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(k_dim)] += damp * np.mean(np.diag(h))
    # Upper Cholesky factor of H^-1: row i holds the error-propagation weights for the rows after i.
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    scales = np.zeros((k_dim // g, n_dim), formats.scale_dtype(scheme.bits))
    zeros = None if scheme.symmetric else np.zeros((k_dim // g, n_dim), np.uint8)
    codes = np.zeros((k_dim, n_dim), np.uint8)
    half = 2 ** (scheme.bits - 1)
    s = z = None
    for i1 in range(0, k_dim, block):
        i2 = min(i1 + block, k_dim)
        err = np.zeros((i2 - i1, n_dim))
        for i in range(i1, i2):
            if i % g == 0:  # new group: scales from the error-updated weights of this group
                sc, zc = formats.group_params(jnp.asarray(w[i:i + g], jnp.float32), scheme)
                scales[i // g] = np.asarray(sc)[0]
                s = scales[i // g].astype(np.float64)
                if zeros is not None:
                    zeros[i // g] = np.asarray(zc)[0]
                    z = zeros[i // g].astype(np.float64)
            row = w[i]
            if scheme.symmetric:
                q = np.clip(np.round(row / s), -(half - 1), half - 1)
                deq, codes[i] = q * s, (q + half).astype(np.uint8)
            else:
                q = np.clip(np.round(row / s) + z, 0, scheme.qmax)
                deq, codes[i] = (q - z) * s, q.astype(np.uint8)
            e = (row - deq) / hinv[i, i]
            w[i + 1:i2] -= np.outer(hinv[i, i + 1:i2], e)
            err[i - i1] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err
    return codes, scales, zeros


def gptq_quantize_fn(hessians: dict, damp: float = 0.01):
    """A `quantize_fn` for `quantize_model` that runs GPTQ per layer with the collected Hessians."""

    def quantize_fn(gi, name, w, scheme: Scheme, dims):
        mat, in_shape, out_shape = to_matrix(w, *dims)  # (L, K, N)
        scheme.group_for(mat.shape[-2], f"group {gi} {name}")
        h = hessians[(gi, name)]
        parts = [gptq_matrix(np.asarray(mat[l]), h[l], scheme, damp) for l in range(mat.shape[0])]
        codes = formats.pack(jnp.asarray(np.stack([p[0] for p in parts])), scheme.bits)
        scale = jnp.asarray(np.stack([p[1] for p in parts]))
        zero = None if scheme.symmetric else jnp.asarray(np.stack([p[2] for p in parts]))
        return QuantizedWeight(codes, scale, zero, scheme, in_shape, out_shape, w.dtype, axes=weight_axes(name))

    return quantize_fn
