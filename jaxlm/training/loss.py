"""Next-token cross-entropy with z-loss, as token sums (so micro-batches add up exactly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def loss_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array, z_loss: float) -> dict[str, jax.Array]:
    """logits (B, T, V) float32, targets (B, T) int, mask (B, T) float (1 = counted).

    Returns sums over counted tokens: `total` = sum(ce + z_loss * logsumexp^2), `ce`, `z`, `tokens`.
    z-loss (PaLM) keeps the softmax normaliser near 1 so bf16 logits do not drift.
    """
    lse = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # (B, T)
    ce = (lse - target_logit) * mask
    z = jnp.square(lse) * mask
    return {"total": jnp.sum(ce) + z_loss * jnp.sum(z), "ce": jnp.sum(ce), "z": jnp.sum(z), "tokens": jnp.sum(mask)}
