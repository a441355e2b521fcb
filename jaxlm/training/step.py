"""The train step: micro-batch gradient accumulation, clipping + AdamW, jitted with explicit shardings.

state = {"params": trainable pure dict, "opt_state": optax state} (+ "reference": the frozen starting
parameters, for DPO with full fine-tuning); `rest` (frozen variables) is an
argument, never updated. A step whose loss or gradient norm is not finite leaves the state
unchanged and reports `finite = False`, so the caller can stop with the last good state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.parallel import rules
from jaxlm.training.loss import LOSS_CHUNK
from jaxlm.training.objectives import TokenObjective
from jaxlm.training.state import SplitModel

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "loss_mask")


def make_train_step(split: SplitModel, tx: optax.GradientTransformation, *, micro_batches: int, z_loss: float = 0.0,
                    loss_chunk: int = LOSS_CHUNK, objective=None, reference: str = "none"):
    """Returns step(state, rest, batch) -> (state, metrics); batch arrays are (B, T).

    objective: jaxlm.training.objectives (pretrain / sft token loss, or a preference loss); its loss is
    computed over `loss_chunk` positions at a time, so the step never holds the (B, T, V) float32 logits.
    reference (DPO): "adapters_off" = the LoRA base with the adapters zeroed (no second copy of anything),
    "frozen_copy" = state["reference"], the parameters the run started from (one copy of the trainable
    parameters, never updated), "none" otherwise. Without an objective: pretraining's, with z_loss and loss_chunk.
    """
    objective = objective or TokenObjective(z_loss, loss_chunk, accuracy=False)

    def loss_fn(params, rest, reference_params, mb):
        model = split.merge(params, rest)
        reference_model = split.merge(reference_params, rest) if reference_params is not None else None
        sums = objective.sums(model, reference_model, mb)
        return sums["total"], sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(state, rest, batch):
        params = state["params"]
        reference_params = reference_of(state, reference)
        b = batch["inputs"].shape[0]
        # (B, T) -> (M, B/M, T): micro-batch m takes rows m, m+M, ... so each stays spread over the batch axes.
        mbs = {k: rules.constrain(jnp.swapaxes(batch[k].reshape(b // micro_batches, micro_batches, -1), 0, 1),
                                  (None, "batch", None)) for k in BATCH_KEYS}

        def accumulate(carry, mb):
            grads, sums = grad_fn(params, rest, reference_params, mb)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        zero = (jax.tree.map(jnp.zeros_like, params), {k: jnp.zeros((), jnp.float32) for k in objective.sum_keys})
        (grads, sums), _ = jax.lax.scan(accumulate, zero, mbs)
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)  # gradient of the mean over all counted tokens (or pairs)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new = {**state, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
        metrics = objective.metrics(sums, count)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, {**metrics, "grad_norm": grad_norm, "finite": finite}

    return step


def reference_of(state: dict, reference: str):
    """The reference model's trainable part (see make_train_step), or None."""
    if reference == "frozen_copy":
        return state["reference"]
    if reference == "adapters_off":  # zero adapters: the frozen base alone
        return jax.tree.map(jnp.zeros_like, state["params"])
    return None


def make_eval_step(split: SplitModel, objective, reference: str = "none"):
    """Returns evaluate(state, rest, batch) -> the objective's sums (for pretraining: summed cross-entropy
    `ce` and `tokens`; the objective should have no z-loss), so passes over several batches (and processes)
    add up exactly. `state` holds "params" (and "reference" for a frozen-copy reference)."""

    def evaluate(state, rest, batch):
        model = split.merge(state["params"], rest)
        reference_params = reference_of(state, reference)
        reference_model = split.merge(reference_params, rest) if reference_params is not None else None
        return objective.sums(model, reference_model, batch)

    return evaluate


def jit_eval_step(evaluate, mesh, state_shardings, rest_shardings):
    batch = {k: rules.batch_sharding(mesh) for k in BATCH_KEYS}

    def traced(params, rest, batch_):
        with rules.use_mesh(mesh):
            return evaluate(params, rest, batch_)

    return jax.jit(traced, in_shardings=(state_shardings, rest_shardings, batch),
                   out_shardings=NamedSharding(mesh, P()))


def jit_train_step(step, mesh, state_shardings, rest_shardings):
    """jax.jit with explicit in/out shardings; the state buffers are donated."""
    batch = {k: rules.batch_sharding(mesh) for k in BATCH_KEYS}
    replicated = NamedSharding(mesh, P())

    def traced(state, rest, batch_):
        with rules.use_mesh(mesh):
            return step(state, rest, batch_)

    return jax.jit(traced, in_shardings=(state_shardings, rest_shardings, batch),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)
