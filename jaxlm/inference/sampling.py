"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

Everything here is jittable and takes its knobs as (traced) scalars, so changing a
temperature or top_p does not recompile the decode program. Order of operations follows
Hugging Face: repetition penalty, temperature, top-k, then top-p on what top-k kept.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.inference import checks


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 means greedy (argmax); seed makes sampling reproducible."""

    temperature: float = 0.0  # 0 = greedy; > 0 divides the logits before sampling
    top_k: int = 0  # keep the k most likely tokens; 0 = no limit
    top_p: float = 1.0  # keep the smallest set of most likely tokens with probability >= top_p; in (0, 1]
    repetition_penalty: float = 1.0  # CTRL-style: seen tokens' logits divided (if > 0) or multiplied by it
    seed: int = 0

    def __post_init__(self):
        # one check per knob, shared by the API and the CLI flags (jaxlm/inference/checks.py)
        fields = {"temperature": checks.number("temperature", self.temperature, 0, note="0 = greedy"),
                  "top_k": checks.integer("top_k", self.top_k, 0, note="0 = off"),
                  "top_p": checks.number("top_p", self.top_p, 0, 1, low_open=True, note="1 = off"),
                  "repetition_penalty": checks.number("repetition_penalty", self.repetition_penalty, 0,
                                                      low_open=True, note="1 = off"),
                  "seed": checks.integer("seed", self.seed, 0, checks.SEED_MAX)}
        for name, value in fields.items():  # normalised: plain Python numbers, whatever came in
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, sampling: dict) -> "SamplingParams":
        """From keyword arguments; an unknown name is a TypeError that lists the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        for name in sampling:
            if name not in known:
                raise checks.ArgumentTypeError(f"unknown sampling argument {name!r}; choose from {', '.join(known)}")
        return cls(**sampling)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def as_arrays(self) -> dict[str, jax.Array]:
        """The traced knobs passed into the compiled programs."""
        return {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(min(self.top_k, 2**31 - 1)),
                "top_p": jnp.float32(self.top_p), "repetition_penalty": jnp.float32(self.repetition_penalty)}


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """logits (B, V) float32, seen (B, V) bool: tokens already in the prompt or output."""
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen, penalised, logits)


def allowed_mask(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """(B, V) bool: the tokens top-k then top-p keep. Exact under ties (ranks, not thresholds).

    The most likely token is always kept, so the set is never empty.
    """
    b, v = logits.shape
    order = jnp.argsort(-logits, axis=-1, stable=True)  # (B, V) token ids, most likely first
    ranked = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(v)
    keep = (top_k <= 0) | (rank < top_k)  # (B, V) in rank order
    probs = jax.nn.softmax(jnp.where(keep, ranked, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the better-ranked tokens
    keep &= (mass_before < top_p) | (top_p >= 1.0) | (rank == 0)
    rows = jnp.arange(b)[:, None]
    return jnp.zeros((b, v), bool).at[rows, order].set(keep)


def sample(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array) -> jax.Array:
    """logits (B, V) float32 -> token ids (B,) int32, drawn from the filtered, tempered distribution."""
    scaled = logits / jnp.maximum(temperature, 1e-6)
    masked = jnp.where(allowed_mask(scaled, top_k, top_p), scaled, -jnp.inf)
    return jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)


def next_token(logits: jax.Array, seen: jax.Array, key: jax.Array, knobs: dict[str, jax.Array], *,
               greedy: bool, vocab_limit: jax.Array) -> jax.Array:
    """One decoding choice per row. logits (B, V); ids >= vocab_limit (no tokenizer piece) never win."""
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    logits = apply_repetition_penalty(logits, seen, knobs["repetition_penalty"])
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample(logits, key, knobs["temperature"], knobs["top_k"], knobs["top_p"])
