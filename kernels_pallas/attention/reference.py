"""Attention in plain XLA: the numerical reference for the flash kernels and the CPU path."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def attention_reference(
    q: jax.Array,  # (B, T, Hq, D)
    k: jax.Array,  # (B, S, Hkv, D)
    v: jax.Array,  # (B, S, Hkv, D)
    *,
    causal: bool = True,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,  # (B, T) or ((B, T), (B, S))
    q_positions: jax.Array | None = None,  # (B, T); default arange(T) (+ S - T when S > T)
    kv_positions: jax.Array | None = None,  # (B, S); default arange(S)
    sm_scale: float | None = None,
    sliding_window: int | None = None,
) -> jax.Array:
    """Softmax attention with GQA: query head h reads kv head h // (Hq // Hkv). Returns (B, T, Hq, D).

    Causal masking compares positions (key position <= query position), so the same function
    serves training (positions = indices) and decoding against a KV cache. Segment ids mask
    attention between different packed documents. Softmax is computed in float32.
    sliding_window W (causal only): a query at position p sees keys at p - W < position <= p, W
    keys with its own, as transformers' `sliding_window_overlay` (Mistral, Phi-3).
    """
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(d)
    qg = q.reshape(b, t, hkv, groups, d)  # (B, T, Hkv, G, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    mask = jnp.ones((b, t, s), dtype=bool)
    if sliding_window is not None and not causal:
        raise ValueError("attention: sliding_window needs causal=True")
    if causal:
        qp = q_positions if q_positions is not None else jnp.broadcast_to(jnp.arange(t) + (s - t), (b, t))
        kp = kv_positions if kv_positions is not None else jnp.broadcast_to(jnp.arange(s), (b, s))
        mask &= kp[:, None, :] <= qp[:, :, None]
        if sliding_window is not None:
            mask &= kp[:, None, :] > qp[:, :, None] - sliding_window
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        mask &= q_seg[:, :, None] == kv_seg[:, None, :]
    logits = jnp.where(mask[:, None, None], logits, -jnp.inf)
    # A query whose every key is masked (a padding row) gets zeros, not NaN.
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(logits - row_max)
    denom = jnp.sum(weights, axis=-1, keepdims=True)
    probs = weights / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, hq, d).astype(q.dtype)
