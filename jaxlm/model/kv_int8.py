"""The int8 KV-cache format, shared by the contiguous cache (`kv_cache`) and the paged one (`paged_kv`): each
key / value vector rounded to int8 with one float32 scale (symmetric absmax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def quantize(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x (..., D) -> int8 values (..., D) and float32 scales (...): symmetric absmax per vector."""
    x32 = x.astype(jnp.float32)
    scale = jnp.max(jnp.abs(x32), axis=-1) / 127.0
    q = jnp.round(x32 / jnp.where(scale == 0, 1.0, scale)[..., None])
    return jnp.clip(q, -127, 127).astype(jnp.int8), scale


def dequantize(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
    return (q.astype(jnp.float32) * scale[..., None]).astype(dtype)
