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


def loss_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array, z_loss: float,
              accuracy: bool = False) -> dict[str, jax.Array]:
    """logits (B, T, V) float32, targets (B, T) int, mask (B, T) float (1 = counted).

    Returns sums over counted tokens: `total` = sum(ce + z_loss * logsumexp^2), `ce`, `z`, `tokens`, and with
    `accuracy` `correct` (tokens whose target is the arg-max, TRL's mean_token_accuracy before dividing).
    z-loss (PaLM) keeps the softmax normaliser near 1 so bf16 logits do not drift.
    """
    lse = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # (B, T)
    ce = (lse - target_logit) * mask
    z = jnp.square(lse) * mask
    sums = {"total": jnp.sum(ce) + z_loss * jnp.sum(z), "ce": jnp.sum(ce), "z": jnp.sum(z), "tokens": jnp.sum(mask)}
    if accuracy:
        sums["correct"] = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * mask)
    return sums


def chunked_loss_sums(hidden: jax.Array, head: tuple[str, jax.Array], targets: jax.Array, mask: jax.Array,
                      z_loss: float, chunk: int = LOSS_CHUNK, accuracy: bool = False) -> dict[str, jax.Array]:
    """`loss_sums(project_logits(hidden, *head), ...)` without the (B, T, V) logits.

    hidden (B, T, D) in the compute dtype (`Transformer.hidden_states`), head = (equation, weight)
    (`Transformer.output_head`), targets / mask (B, T). T is padded to a multiple of `chunk`
    with uncounted tokens.
    """
    equation, weight = head
    keys = ("ce", "z", "tokens") + (("correct",) if accuracy else ())

    @jax.checkpoint  # the backward recomputes the chunk's logits instead of keeping them
    def chunk_sums(weight, x, tgt, m):
        sums = loss_sums(project_logits(x, equation, weight), tgt, m, z_loss, accuracy)
        return {k: sums[k] for k in keys}

    def body(acc, xs):
        return jax.tree.map(jnp.add, acc, chunk_sums(weight, *xs)), None

    zero = {k: jnp.zeros((), jnp.float32) for k in keys}
    blocks = _chunker(hidden.shape[0], hidden.shape[1], chunk)
    sums, _ = jax.lax.scan(body, zero, (blocks(hidden), blocks(targets), blocks(mask.astype(jnp.float32))))
    return {"total": sums["ce"] + z_loss * sums["z"], **sums}


def chunked_token_logps(hidden: jax.Array, head: tuple[str, jax.Array], targets: jax.Array,
                        chunk: int = LOSS_CHUNK) -> jax.Array:
    """(B, T) float32 log-probability of each target token, chunk by chunk as `chunked_loss_sums` (the
    preference objectives sum them per sequence)."""
    equation, weight = head
    b, t = targets.shape

    @jax.checkpoint
    def chunk_logps(weight, x, tgt):
        logits = project_logits(x, equation, weight)  # (B, c, V) float32
        target_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return target_logit - jax.nn.logsumexp(logits, axis=-1)

    blocks = _chunker(b, t, chunk)
    _, logps = jax.lax.scan(lambda _, xs: (None, chunk_logps(weight, *xs)), None, (blocks(hidden), blocks(targets)))
    return jnp.swapaxes(logps, 0, 1).reshape(b, -1)[:, :t]  # (n, B, c) -> (B, T)


def _chunker(b: int, t: int, chunk: int):
    """(B, T, ...) -> (n, B, c, ...): T padded to n chunks of c = min(chunk, T) positions."""
    c = min(chunk, t)
    n = -(-t // c)
    pad = n * c - t

    def blocks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape((b, n, c) + x.shape[2:]), 0, 1)

    return blocks
