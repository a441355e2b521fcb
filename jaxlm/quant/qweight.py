"""`QuantizedWeight`: an NNX module that stands in for a weight nnx.Param.

The model reads a weight as `self.qkv[...]` and hands it to `jaxlm.ops.dense`; a
QuantizedWeight returns itself from `[...]`, and `dense` calls its `.dense(equation, x, dtype)`,
which dequantizes inside the jitted matmul (XLA fuses the unpack-scale into the einsum's
operand). `jnp.asarray(qw)` (e.g. the embedding lookup) gives the dequantized array.

Storage (see `jaxlm.quant.formats`), with lead = the stacked-layer axes:
  codes (lead..., K / per_byte, N) uint8,  scale (lead..., K / g, N) float32 (8-bit) / float16,
  zero  (lead..., K / g, N) uint8 (asymmetric only)
where K = prod(in_shape), N = prod(out_shape). `transposed` marks weights stored (out, in),
i.e. the (V, D) embedding table.

Sharding: `axes` = the float weight's logical (in, out) axes (jaxlm.model.layout). K and the
group dim of the scales take the in side's axis, N the out side's, so codes and scales split over
the same mesh axes as the float weight (where the sizes divide). A flattened side takes its first
named axis: contiguous blocks of K or N are blocks of its leading dim, which is exact for attn's
(kv_heads, G, hd) when the mesh divides kv_heads; ffn.w_in's N = (2, F) splits over "mlp"'s mesh
axis in gate | up blocks rather than within each. The rule table sees the flattened size, so a
layer whose kv heads do not divide (OpenELM's 3 on tensor=2) may split its codes where the float
weight replicates. Packing is along K in adjacent rows: a block of packed rows is a block of K.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm import ops
from jaxlm.quant import formats
from jaxlm.quant.formats import Scheme


class QuantParam(nnx.Param):
    """A frozen stored piece of a quantized weight (codes, scales, zero points); never trained."""


Axes = tuple[tuple[str | None, ...], tuple[str | None, ...]]  # a weight's logical (in, out) axes


def _flat_axis(axes: tuple[str | None, ...]) -> str | None:
    """The logical axis of dims flattened into one: the first named one (see the module docstring)."""
    return next((a for a in axes if a is not None), None)


class QuantizedWeight(nnx.Module):
    def __init__(self, codes, scale, zero, scheme: Scheme, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 dtype: str, transposed: bool = False, axes: Axes | None = None):
        """axes: the float weight's logical (in_axes, out_axes); None leaves K and N unsharded."""
        in_axes, out_axes = axes or ((), ())
        kn_axes = ("layers",) * (codes.ndim - 2) + (_flat_axis(in_axes), _flat_axis(out_axes))
        self.codes = QuantParam(codes, axes=kn_axes)
        self.scale = QuantParam(scale, axes=kn_axes)  # (lead..., K / g, N): groups along K
        self.zero = None if zero is None else QuantParam(zero, axes=kn_axes)
        self.bits, self.group_size, self.symmetric = scheme.bits, scheme.group_size, scheme.symmetric
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.orig_dtype = str(jnp.dtype(dtype))
        self.transposed = transposed

    @classmethod
    def from_array(cls, w: jax.Array, scheme: Scheme, n_in: int, n_out: int, transposed: bool = False,
                   name: str = "weight", axes: Axes | None = None) -> "QuantizedWeight":
        """Round-to-nearest quantization of w (lead..., *in, *out), or (lead..., *out, *in) if transposed."""
        if isinstance(w, jax.ShapeDtypeStruct):  # abstract model: shapes only, by arithmetic
            return cls.abstract(w.shape, w.dtype, scheme, n_in, n_out, transposed, name, axes)
        mat, in_shape, out_shape = to_matrix(w, n_in, n_out, transposed)
        scheme.group_for(mat.shape[-2], name)
        codes, scale, zero = formats.quantize(mat, scheme)
        return cls(codes, scale, zero, scheme, in_shape, out_shape, w.dtype, transposed, axes)

    @classmethod
    def abstract(cls, shape, dtype, scheme: Scheme, n_in: int, n_out: int, transposed: bool = False,
                 name: str = "weight", axes: Axes | None = None) -> "QuantizedWeight":
        """The structure for a weight of `shape`, with jax.ShapeDtypeStruct leaves (nothing computed)."""
        lead = tuple(shape[: len(shape) - n_in - n_out])
        inner = tuple(shape[len(lead):])
        out_shape, in_shape = (inner[:n_out], inner[n_out:]) if transposed else (inner[n_in:], inner[:n_in])
        k, n = math.prod(in_shape), math.prod(out_shape)
        g = scheme.group_for(k, name)
        sds = jax.ShapeDtypeStruct
        codes = sds(lead + (k // formats.PER_BYTE[scheme.bits], n), jnp.uint8)
        scale = sds(lead + (k // g, n), formats.scale_dtype(scheme.bits))
        zero = None if scheme.symmetric else sds(lead + (k // g, n), jnp.uint8)
        return cls(codes, scale, zero, scheme, in_shape, out_shape, dtype, transposed, axes)

    @property
    def scheme(self) -> Scheme:
        return Scheme(self.bits, self.group_size, self.symmetric)

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape[:-2])

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical shape of the weight this stands for."""
        inner = self.out_shape + self.in_shape if self.transposed else self.in_shape + self.out_shape
        return self.lead_shape + inner

    @property
    def dtype(self):
        return jnp.dtype(self.orig_dtype)

    def matrix(self, dtype=None) -> jax.Array:
        """Dequantized (lead..., K, N)."""
        return formats.dequantize(self.codes[...], self.scale[...], None if self.zero is None else self.zero[...],
                                  self.scheme, dtype or self.dtype)

    def dequantize(self, dtype=None) -> jax.Array:
        """Dequantized weight in its logical shape (lead..., *in, *out) (or transposed)."""
        mat = self.matrix(dtype)
        lead = self.lead_shape
        if self.transposed:
            return jnp.swapaxes(mat, -1, -2).reshape(lead + self.out_shape + self.in_shape)
        return mat.reshape(lead + self.in_shape + self.out_shape)

    def dense(self, equation: str, x: jax.Array, dtype) -> jax.Array:
        """einsum(equation, x, W). When x's trailing dims are the contracted ones (every projection in
        the model), one `ops.quantized_matmul` over the packed codes; else dequantize, then einsum."""
        n_in = len(self.in_shape)
        if self.lead_shape or not self._is_trailing_contraction(equation):
            w = self.dequantize(dtype)
            return jnp.einsum(equation, x.astype(dtype), w, preferred_element_type=jnp.float32).astype(dtype)
        lead = x.shape[:x.ndim - n_in]
        y = ops.quantized_matmul(x.reshape(lead + (math.prod(self.in_shape),)), self.codes[...], self.scale[...],
                                 None if self.zero is None else self.zero[...], bits=self.bits, dtype=dtype)
        return y.reshape(lead + self.out_shape)

    def _is_trailing_contraction(self, equation: str) -> bool:
        """True for "...<in>,<in><out>->...<out>" (<out><in> when transposed): x (..., *in) @ W."""
        inputs, out = equation.split("->")
        lhs, rhs = inputs.split(",")
        if self.transposed:  # read the (out, in) weight's letters as (in, out)
            n_out = len(self.out_shape)
            rhs = rhs[n_out:] + rhs[:n_out]
        return ops.trailing_contraction(f"{lhs},{rhs}->{out}") == len(self.in_shape)

    def __getitem__(self, key):
        return self if key is Ellipsis else self.dequantize()[key]

    def __jax_array__(self):
        return self.dequantize()

    def stored_bytes(self) -> int:
        """Bytes actually held: codes + scales (+ zero points)."""
        arrays = [self.codes, self.scale] + ([self.zero] if self.zero is not None else [])
        return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)

    def num_weights(self) -> int:
        return math.prod(self.shape)


def to_matrix(w, n_in: int, n_out: int, transposed: bool = False):
    """w (lead..., *in, *out) -> ((lead..., K, N), in_shape, out_shape); transposed: w is (lead..., *out, *in)."""
    lead = w.shape[: w.ndim - n_in - n_out]
    inner = w.shape[len(lead):]
    if transposed:
        out_shape, in_shape = inner[:n_out], inner[n_out:]
        mat = jnp.swapaxes(w.reshape(lead + (math.prod(out_shape), math.prod(in_shape))), -1, -2)
    else:
        in_shape, out_shape = inner[:n_in], inner[n_in:]
        mat = w.reshape(lead + (math.prod(in_shape), math.prod(out_shape)))
    return mat, tuple(in_shape), tuple(out_shape)
