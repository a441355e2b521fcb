"""What the train step minimises, chosen by `posttrain.objective`, as sums over a micro-batch (so
micro-batches and processes add up exactly) divided by `count` at the end.

    pretrain, sft   next-token cross-entropy (+ z-loss) over the rows' loss_mask; sft counts the tokens
                    whose target is the arg-max too (TRL's mean_token_accuracy)
    dpo             -log sigmoid(beta * margin) with cDPO label smoothing, margin = (policy - reference) log-prob
                    of the chosen answer minus that of the rejected one (the DPO paper; TRL's sigmoid loss)
    simpo           reference-free: -log sigmoid(beta * (mean log-prob chosen - rejected) - gamma) (SimPO)

A preference row holds one pair: segment 1 = prompt + chosen, segment 2 = prompt + rejected, loss_mask
on the answer tokens (jaxlm.posttrain.rows). The metrics carry TRL's names (rewards/chosen, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.training.loss import chunked_loss_sums, chunked_token_logps

# TRL's metric name -> the per-pair sum it is the mean of
PAIR_METRICS = {"rewards/chosen": "chosen_rewards", "rewards/rejected": "rejected_rewards",
                "rewards/accuracies": "correct", "rewards/margins": "margins", "logps/chosen": "chosen_logps",
                "logps/rejected": "rejected_logps"}


def preference_loss(chosen, rejected, beta: float, label_smoothing: float = 0.0):
    """Per-pair loss of the sigmoid form, with logits = chosen - rejected (DPO: log-ratios to the reference;
    SimPO: beta-scaled mean log-probs minus gamma / beta). (P,) -> (P,)"""
    logits = beta * (chosen - rejected)
    return -jax.nn.log_sigmoid(logits) * (1 - label_smoothing) - jax.nn.log_sigmoid(-logits) * label_smoothing


class TokenObjective:
    """pretrain / sft: masked next-token cross-entropy."""

    def __init__(self, z_loss: float, loss_chunk: int, accuracy: bool):
        self.z_loss, self.loss_chunk, self.accuracy = z_loss, loss_chunk, accuracy
        self.sum_keys = ("total", "ce", "z", "tokens", "count") + (("correct",) if accuracy else ())
        self.needs_reference = False

    def sums(self, model, reference_model, mb) -> dict:
        hidden = model.hidden_states(mb["inputs"], positions=mb["positions"], segment_ids=mb["segment_ids"])
        sums = chunked_loss_sums(hidden, model.output_head(), mb["targets"], mb["loss_mask"], self.z_loss,
                                 self.loss_chunk, self.accuracy)
        return {**sums, "count": sums["tokens"]}

    def metrics(self, sums: dict, count) -> dict:
        out = {"loss": sums["total"] / count, "ce": sums["ce"] / count, "z": sums["z"] / count,
               "tokens": sums["tokens"]}
        if self.accuracy:
            out["mean_token_accuracy"] = sums["correct"] / count
        return out


class PreferenceObjective:
    """dpo / simpo on rows of one pair each."""

    def __init__(self, cfg, loss_chunk: int):
        self.kind, self.beta, self.label_smoothing, self.gamma = (cfg.objective, cfg.beta, cfg.label_smoothing,
                                                                  cfg.simpo_gamma)
        self.loss_chunk = loss_chunk
        self.needs_reference = cfg.objective == "dpo"
        self.sum_keys = ("total", "count", "ce", "z", "tokens", *PAIR_METRICS.values())

    def sequence_logps(self, model, mb):
        """(chosen, rejected, chosen tokens, rejected tokens) per row, each (B,): summed answer log-probs."""
        hidden = model.hidden_states(mb["inputs"], positions=mb["positions"], segment_ids=mb["segment_ids"])
        logps = chunked_token_logps(hidden, model.output_head(), mb["targets"], self.loss_chunk)  # (B, T)
        side = [(mb["segment_ids"] == s) * mb["loss_mask"] for s in (1, 2)]
        return (*(jnp.sum(logps * m, axis=1) for m in side), *(jnp.sum(m, axis=1) for m in side))

    def sums(self, model, reference_model, mb) -> dict:
        chosen, rejected, n_chosen, n_rejected = self.sequence_logps(model, mb)
        is_pair = (n_chosen > 0) & (n_rejected > 0)  # padding rows hold none
        if self.kind == "dpo":
            ref_chosen, ref_rejected, _, _ = jax.lax.stop_gradient(self.sequence_logps(reference_model, mb))
            chosen_scores, rejected_scores = chosen - ref_chosen, rejected - ref_rejected
            losses = preference_loss(chosen_scores, rejected_scores, self.beta, self.label_smoothing)
        else:  # SimPO: length-normalised log-probs, margin gamma (TRL's CPO loss_type="simpo")
            chosen_scores = chosen / jnp.maximum(n_chosen, 1.0)
            rejected_scores = rejected / jnp.maximum(n_rejected, 1.0)
            losses = preference_loss(chosen_scores - self.gamma / self.beta, rejected_scores, self.beta,
                                     self.label_smoothing)
        chosen_rewards, rejected_rewards = (self.beta * jax.lax.stop_gradient(x)
                                            for x in (chosen_scores, rejected_scores))
        weight = is_pair.astype(jnp.float32)
        total = lambda x: jnp.sum(x * weight)  # noqa: E731
        zero = jnp.zeros((), jnp.float32)
        return {"total": total(losses), "count": jnp.sum(weight), "ce": zero, "z": zero,
                "tokens": jnp.sum(mb["loss_mask"]), "chosen_rewards": total(chosen_rewards),
                "rejected_rewards": total(rejected_rewards),
                "correct": total((chosen_rewards > rejected_rewards).astype(jnp.float32)),
                "margins": total(chosen_rewards - rejected_rewards), "chosen_logps": total(chosen),
                "rejected_logps": total(rejected)}

    def metrics(self, sums: dict, count) -> dict:
        return {"loss": sums["total"] / count, "ce": sums["ce"], "z": sums["z"], "tokens": sums["tokens"],
                "pairs": sums["count"], **{name: sums[key] / count for name, key in PAIR_METRICS.items()}}


def make_objective(posttrain, z_loss: float, loss_chunk: int):
    """The objective of a run's `posttrain` section (PostTrainConfig)."""
    if posttrain.preference:
        return PreferenceObjective(posttrain, loss_chunk)
    return TokenObjective(z_loss, loss_chunk, accuracy=posttrain.objective == "sft")
