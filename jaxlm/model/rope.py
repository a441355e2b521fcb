"""Rotary position embeddings (rotate-half form, as Hugging Face), with Llama 3.1 and
Phi-3 LongRoPE frequency scaling. Computed in float32."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """(head_dim/2,) inverse frequencies, after llama3 / linear scaling (not longrope: see rope_tables)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    if scaling.type == "llama3":
        return _llama3_scale(inv_freq, scaling)
    return inv_freq


def _llama3_scale(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate between."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_position / s.low_freq_factor
    high_freq_wavelen = s.original_max_position / s.high_freq_factor
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    mid = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    is_mid = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_mid, mid, out)


def longrope_attention_factor(max_context: int, original_max_position: int) -> float:
    """Phi-3 LongRoPE multiplies cos and sin by sqrt(1 + ln(max/orig) / ln(orig))."""
    scale = max_context / original_max_position
    return 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original_max_position))


def rope_tables(positions: jax.Array, head_dim: int, theta: float, scaling: RopeScaling,
                max_context: int, seq_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """positions (B, T) int -> cos, sin (B, T, head_dim) float32.

    LongRoPE picks short or long factors per row: long when the row's sequence length exceeds
    `original_max_position`. seq_lengths (B,) gives that length (a right-padded prompt: its real
    tokens); default each row's largest position + 1. Hugging Face takes one maximum over the
    whole batch; the two agree at batch 1 and for rows of one length (docs/inference.md).
    """
    pos = positions.astype(jnp.float32)[..., None]  # (B, T, 1)
    if scaling.type == "longrope":
        base = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        short = jnp.asarray(base / np.asarray(scaling.short_factor), jnp.float32)
        long = jnp.asarray(base / np.asarray(scaling.long_factor), jnp.float32)
        if seq_lengths is None:
            seq_lengths = jnp.max(positions, axis=1) + 1
        use_long = (seq_lengths > scaling.original_max_position)[:, None, None]  # (B, 1, 1)
        freqs = pos * jnp.where(use_long, long, short)  # (B, T, D/2)
        attn_factor = longrope_attention_factor(max_context, scaling.original_max_position)
    else:
        freqs = pos * jnp.asarray(inverse_frequencies(head_dim, theta, scaling), jnp.float32)
        attn_factor = 1.0
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # (B, T, D)
    return jnp.cos(emb) * attn_factor, jnp.sin(emb) * attn_factor


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (B, T, H, D); cos/sin (B, T, D). Rotate-half: x*cos + [-x2, x1]*sin, in float32."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
