"""Weight matmuls. Every projection in the model goes through `dense`, so weight formats
other than a plain array (quantized weights, LoRA-wrapped weights) plug in here."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(equation: str, x: jax.Array, w, dtype=None, out_dtype=None) -> jax.Array:
    """einsum(equation, x, w) computed in `dtype` (default x.dtype) with float32 accumulation,
    returned in `out_dtype` (default `dtype`; float32 keeps the accumulator unrounded)."""
    dtype = dtype or x.dtype
    out_dtype = out_dtype or dtype
    if hasattr(w, "dense") and jnp.dtype(out_dtype) == jnp.dtype(dtype):  # a weight type with its own matmul
        return w.dense(equation, x, dtype)
    return jnp.einsum(equation, x.astype(dtype), jnp.asarray(w).astype(dtype),
                      preferred_element_type=jnp.float32).astype(out_dtype)
