"""Weight matmuls. Every projection in the model goes through `dense`, so weight formats
other than a plain array (quantized weights, LoRA-wrapped weights) plug in here."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(equation: str, x: jax.Array, w, dtype=None) -> jax.Array:
    """einsum(equation, x, w) computed in `dtype` (default x.dtype) with float32 accumulation."""
    dtype = dtype or x.dtype
    if hasattr(w, "dense"):  # a weight type that knows its own matmul (e.g. quantized)
        return w.dense(equation, x, dtype)
    return jnp.einsum(equation, x.astype(dtype), jnp.asarray(w).astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)
