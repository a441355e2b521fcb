"""LongRoPE's switch inside the decode loop (Phi-3 128k): a row that crosses the switch point
rebuilds its cache with the long factors.

Below `original_max_position` a row's positions use the short factors; a sequence longer than that
uses the long ones for every position. So when a row's next input sits at position
n = original_max_position (its sequence first exceeds n), its cache is dropped and recomputed, with
this step's logits, from its n + 1 tokens with the long factors; later steps decode against that cache.
This is what transformers' Phi3ForCausalLM.prepare_inputs_for_generation does, here per row
(docs/inference.md). The decode state carries the first n + 1 tokens of each row (`history`) for it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.model import kv_cache


def switch_position(cfg, cache_len: int) -> int | None:
    """LongRoPE's switch position (original_max_position) when a decode over a cache of cache_len
    slots can reach it, else None (no history is carried, the hook never runs)."""
    rs = cfg.rope_scaling
    return rs.original_max_position if rs.type == "longrope" and cache_len > rs.original_max_position else None


def initial_history(tokens: jax.Array, switch: int) -> jax.Array:
    """(B, switch + 1) ids: the prompt's first tokens (B, T); the decode loop fills in the rest."""
    b, t = tokens.shape
    m = min(t, switch + 1)
    return jnp.zeros((b, switch + 1), jnp.int32).at[:, :m].set(tokens[:, :m])


def after_step(model, history, token, position, done, logits, cache):
    """The decode step's hook: record this step's input tokens, then rebuild the rows now crossing.

    history (B, n + 1), token / position / done (B,) (the step's input), logits (B, 1, V), cache: the
    batch's. Returns (history, logits, cache)."""
    history = history.at[jnp.arange(history.shape[0]), position].set(token, mode="drop")
    logits, cache = _rebuild_crossing_rows(model, history, position, done, logits, cache)
    return history, logits, cache


def _rebuild_crossing_rows(model, history, position, done, logits, cache):
    n1 = history.shape[1]
    crossing = (position == n1 - 1) & ~done

    def rebuild(i, carry):
        logits, cache = carry
        fresh = kv_cache.init_cache(model.cfg, 1, n1, cache[0]["k"].dtype)
        row = jax.lax.dynamic_slice_in_dim(history, i, 1)  # (1, n + 1)
        hidden, fresh = model.cached_hidden_states(row, positions=jnp.arange(n1)[None], cache=fresh)
        logits = logits.at[i].set(model.logits(hidden[:, -1:])[0])
        # Slots 0 .. n of row i: cache arrays are (L, B, Hkv, S[, D]), the fresh ones (L, 1, Hkv, n + 1[, D]).
        cache = jax.tree.map(lambda old, new: jax.lax.dynamic_update_slice(old, new, (0, i) + (0,) * (old.ndim - 2)),
                             cache, fresh)
        return logits, cache

    def maybe(i, carry):
        return jax.lax.cond(crossing[i], rebuild, lambda i, c: c, i, carry)

    return jax.lax.fori_loop(0, history.shape[0], maybe, (logits, cache))
