"""The train step: micro-batch gradient accumulation, clipping + AdamW, jitted with explicit shardings.

state = {"params": trainable pure dict, "opt_state": optax state}; `rest` (frozen variables) is an
argument, never updated. A step whose loss or gradient norm is not finite leaves the state
unchanged and reports `finite = False`, so the caller can stop with the last good state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.parallel import rules
from jaxlm.training.loss import LOSS_CHUNK, chunked_loss_sums
from jaxlm.training.state import SplitModel

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def make_train_step(split: SplitModel, tx: optax.GradientTransformation, *, micro_batches: int,
                    z_loss: float, loss_chunk: int = LOSS_CHUNK):
    """Returns step(state, rest, batch) -> (state, metrics); batch arrays are (B, T).

    The loss is computed over `loss_chunk` positions at a time (`chunked_loss_sums`): the step
    never holds the (B, T, V) float32 logits.
    """

    def loss_fn(params, rest, mb):
        model = split.merge(params, rest)
        hidden = model.hidden_states(mb["inputs"], positions=mb["positions"], segment_ids=mb["segment_ids"])
        sums = chunked_loss_sums(hidden, model.output_head(), mb["targets"], mb["loss_mask"], z_loss, loss_chunk)
        return sums["total"], sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(state, rest, batch):
        params = state["params"]
        b = batch["inputs"].shape[0]
        # (B, T) -> (M, B/M, T): micro-batch m takes rows m, m+M, ... so each stays spread over the batch axes.
        mbs = {k: rules.constrain(jnp.swapaxes(batch[k].reshape(b // micro_batches, micro_batches, -1), 0, 1),
                                  (None, "batch", None)) for k in BATCH_KEYS}

        def accumulate(carry, mb):
            grads, sums = grad_fn(params, rest, mb)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zero = (jax.tree.map(jnp.zeros_like, params),
                {k: jnp.zeros((), jnp.float32) for k in ("total", "ce", "z", "tokens")})
        (grads, sums), _ = jax.lax.scan(accumulate, zero, mbs)
        tokens = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)  # gradient of the mean over all counted tokens
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
        loss = sums["total"] / tokens
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        metrics = {"loss": loss, "ce": sums["ce"] / tokens, "z": sums["z"] / tokens, "grad_norm": grad_norm,
                   "tokens": sums["tokens"], "finite": finite}
        return new, metrics

    return step


def make_eval_step(split: SplitModel, loss_chunk: int = LOSS_CHUNK):
    """Returns evaluate(params, rest, batch) -> {"ce", "tokens"}: summed cross-entropy (no z-loss) and the
    number of counted tokens, so passes over several batches (and processes) add up exactly."""

    def evaluate(params, rest, batch):
        model = split.merge(params, rest)
        hidden = model.hidden_states(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])
        sums = chunked_loss_sums(hidden, model.output_head(), batch["targets"], batch["loss_mask"], 0.0, loss_chunk)
        return {"ce": sums["ce"], "tokens": sums["tokens"]}

    return evaluate


def jit_eval_step(evaluate, mesh, param_shardings, rest_shardings):
    batch = {k: rules.batch_sharding(mesh) for k in BATCH_KEYS}

    def traced(params, rest, batch_):
        with rules.use_mesh(mesh):
            return evaluate(params, rest, batch_)

    return jax.jit(traced, in_shardings=(param_shardings, rest_shardings, batch), out_shardings=NamedSharding(mesh, P()))


def jit_train_step(step, mesh, state_shardings, rest_shardings):
    """jax.jit with explicit in/out shardings; the state buffers are donated."""
    batch = {k: rules.batch_sharding(mesh) for k in BATCH_KEYS}
    replicated = NamedSharding(mesh, P())

    def traced(state, rest, batch_):
        with rules.use_mesh(mesh):
            return step(state, rest, batch_)

    return jax.jit(traced, in_shardings=(state_shardings, rest_shardings, batch),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
