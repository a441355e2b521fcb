"""Attention of a few new queries against a head-major KV cache, in plain XLA: the decode step.

The cache is stored (B, Hkv, S, D) (jaxlm.model.kv_cache), which is the layout both einsums
read, so nothing is transposed: a decode step reads each cached key and value once. Scores are
(B, Hkv, G, T, S) float32, O(T·S), which is small for the T of a decode step (one token, or a few);
a prompt prefilled against the cache takes the blockwise path instead.

Masking is by position (slot s holds position s): key slot s is seen by a query at position p
when s <= p (and s > p - window with a sliding window).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array,
                     sliding_window: int | None = None) -> jax.Array:
    """q (B, T, Hq, D), k/v (B, Hkv, S, D) head-major, q_positions (B, T) -> (B, T, Hq, D)."""
    b, t, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    qg = q.reshape(b, t, hkv, hq // hkv, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", qg, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * (1.0 / math.sqrt(d))
    slot = jnp.arange(s)[None, None, :]
    pos = q_positions[:, :, None]
    mask = slot <= pos  # (B, T, S)
    if sliding_window is not None:
        mask &= slot > pos - sliding_window
    scores = jnp.where(mask[:, None, None], scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # a query that sees nothing gets zeros
    weights = jnp.exp(scores - row_max)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bkgts,bksd->btkgd", probs.astype(q.dtype), v.astype(q.dtype),
                     preferred_element_type=jnp.float32)
    return out.reshape(b, t, hq, d).astype(q.dtype)
