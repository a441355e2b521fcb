"""Next-token cross-entropy with z-loss, as token sums (so micro-batches add up exactly).

`loss_sums` takes full logits; `chunked_loss_sums` takes the hidden states and the output head and
computes the same sums over sequence chunks, so the train step never holds (B, T, V) float32 logits:
each chunk's logits are projected, reduced to three sums and dropped, and recomputed in the backward
(`jax.checkpoint` per chunk inside a `lax.scan`). Memory for the loss: one (B, chunk, V) float32 tile
(and its cotangent) instead of (B, T, V).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.model.transformer import project_logits

LOSS_CHUNK = 512  # sequence positions per chunk: (B, 512, V) f32 logits, 2 x 512 x 32000 x 4 B = 131 MB


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


def chunked_loss_sums(hidden: jax.Array, head: tuple[str, jax.Array], targets: jax.Array, mask: jax.Array,
                      z_loss: float, chunk: int = LOSS_CHUNK) -> dict[str, jax.Array]:
    """`loss_sums(project_logits(hidden, *head), ...)` without the (B, T, V) logits.

    hidden (B, T, D) in the compute dtype (`Transformer.hidden_states`), head = (equation, weight)
    (`Transformer.output_head`), targets / mask (B, T). T is padded to a multiple of `chunk`
    with uncounted tokens.
    """
    equation, weight = head
    b, t, d = hidden.shape
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def blocks(x):  # (B, T, ...) -> (n, B, c, ...)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape((b, n, c) + x.shape[2:]), 0, 1)

    @jax.checkpoint  # the backward recomputes the chunk's logits instead of keeping them
    def chunk_sums(weight, x, tgt, m):
        sums = loss_sums(project_logits(x, equation, weight), tgt, m, z_loss)
        return {k: sums[k] for k in ("ce", "z", "tokens")}

    def body(acc, xs):
        return jax.tree.map(jnp.add, acc, chunk_sums(weight, *xs)), None

    zero = {k: jnp.zeros((), jnp.float32) for k in ("ce", "z", "tokens")}
    sums, _ = jax.lax.scan(body, zero, (blocks(hidden), blocks(targets), blocks(mask.astype(jnp.float32))))
    return {"total": sums["ce"] + z_loss * sums["z"], **sums}
