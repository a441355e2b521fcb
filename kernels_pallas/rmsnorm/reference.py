"""RMSNorm in plain XLA: the numerical reference for the Pallas kernels and the CPU path."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm_reference(x: jax.Array, weight: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x: (..., D), weight: (D,) -> (..., D) in x.dtype. Normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)


def rms_norm_residual_reference(x: jax.Array, residual: jax.Array, weight: jax.Array,
                                eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Pre-norm block step: h = x + residual; returns (h, rms_norm(h))."""
    h = x + residual
    return h, rms_norm_reference(h, weight, eps)
