"""Weight matmuls. Every projection in the model goes through `dense`, so weight formats
other than a plain array (quantized weights, LoRA-wrapped weights) plug in here.

A projection whose weight's leading dims are contracted with x's trailing dims (all of the
model's: "btd,dkgh->btkgh", "btkgh,kghd->btd", ...) runs as one 2-D matmul, x (M, K) @ W (K, N)
with M = every leading position (B·T), both reshapes free in row-major order. Given the 4-D einsum
instead, XLA:CPU transposed and copied the attention output weight on every decode step
(docs/inference.md). Given x with its (B, T) leading dims kept, the backward's weight gradient
contracts two axes, and XLA:CPU transposed the output gradient into a copy and ran that matmul
outside its YNNPACK kernels: the tiny_uniform train step took 1.19x as long (docs/training.md). On a TPU the
reshape is not free: its arrays are tiled over their two minor dims, so the (D, 2, F) FFN
weight as (D, 2F) is a relayout copy of the whole weight per step; there the einsum goes to
XLA as written, and the TPU compiler reads every weight in place.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxlm.ops.dispatch import target_platform
from jaxlm.ops.policy import policy


@functools.lru_cache(maxsize=256)
def trailing_contraction(equation: str) -> int | None:
    """n when `equation` is x (..., *c) times w (*c, *o) -> (..., *o) with n = len(c) contracted
    dims, in the same order on both sides; else None."""
    inputs, out = equation.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    n = sum(1 for a in rhs if a not in out)
    if n == 0 or "." in equation or not (rhs[:n] == lhs[len(lhs) - n:] and out == lhs[:len(lhs) - n] + rhs[n:]):
        return None
    return n


def dense(equation: str, x: jax.Array, w, dtype=None, out_dtype=None) -> jax.Array:
    """einsum(equation, x, w) computed in `dtype` (default x.dtype) with float32 accumulation,
    returned in `out_dtype` (default `dtype`; float32 keeps the accumulator unrounded)."""
    dtype = dtype or x.dtype
    out_dtype = out_dtype or dtype
    if hasattr(w, "dense") and jnp.dtype(out_dtype) == jnp.dtype(dtype):  # a weight type with its own matmul
        return w.dense(equation, x, dtype)
    x, w = x.astype(dtype), jnp.asarray(w).astype(dtype)
    n = trailing_contraction(equation)
    if n is None or not policy(target_platform()).dense_as_2d_dot:
        return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32).astype(out_dtype)
    lead, out_dims = x.shape[:x.ndim - n], w.shape[n:]
    x2 = x.reshape(math.prod(lead), math.prod(w.shape[:n]))  # rows: every leading (batch, time) position
    w2 = w.reshape(math.prod(w.shape[:n]), math.prod(out_dims))
    y = jax.lax.dot_general(x2, w2, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y.reshape(lead + out_dims).astype(out_dtype)
