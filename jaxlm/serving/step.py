"""The serving engine's compiled program: feed some tokens per row through the paged cache, pick one.

    run(tokens (B, T), start (B,), page_table (B, P), last (B,), ...) -> token (B,), logprob (B,)

Row b feeds tokens[b] at positions start[b] .. start[b] + T - 1 (its keys and values go into its
pages, `jaxlm.model.paged_kv`), attends over its P pages, and picks the next token from the
logits at index last[b]. Decode is B = the decoding rows (bucketed), T = 1; a prefill chunk is a
few rows of up to `prefill_chunk` tokens. The pools are donated, so each call updates the page
pool in place.

Compiled shapes are bucketed (`bucket`, `scheduler.Scheduler._view_pages`): rows and tokens per row to
powers of two, pages to a ladder from 64 tokens' worth (decode; prefill 2048) to the context, so a run
compiles a handful of programs, not one per request (`StepRunner.compile` builds them ahead of time:
`ServingEngine.warmup`). Sampling knobs are per-row arrays: a row's
draw uses its own key fold_in(key(seed), n) for its n-th token, so its samples do not depend on
which other requests share the step. A call whose rows are all greedy compiles without the sort.

    run_block(tokens (B,), start (B,), page_table (B, P), budget (B,), stop_ids (B, S), steps, ...)
        -> tokens (B, K), logprobs (B, K)

is multi-step decode: up to K = `decode_steps` decode iterations of the same body in one
`lax.while_loop`, each feeding the token the previous one picked (row b's i-th at position
start[b] + i, its draw keyed by counter[b] + i, exactly as K single steps would). The host reserves
the pages of all K positions first. A row stops on device at one of its stop ids or after budget[b]
tokens (its max_tokens left): from then on its table points at the trash page and its outputs are
-1; the loop ends after `steps` iterations or when every row has stopped. Stop strings are the
host's (`Scheduler._decode_block` drops the tokens after one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.inference.sampling import allowed_mask
from jaxlm.model import paged_kv


def bucket(n: int, low: int, high: int, factor: int = 2) -> int:
    """The first of low, low * factor, low * factor^2, ... that is >= n, capped at high."""
    size = low
    while size < n:
        size *= factor
    return min(size, high)


def choose(logits, seeds, counters, temperature, top_k, top_p, vocab_limit, *, greedy_only: bool):
    """logits (B, V) float32 -> (token (B,) int32, its log-probability under the model (B,) float32).

    Row b is greedy when temperature[b] == 0, else sampled (`jaxlm.inference.sampling.sample`) with
    its own knobs and key. The log-probability is that of the untempered, unfiltered distribution."""
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if not greedy_only:  # `jaxlm.inference.sampling.sample` with (B, 1) knobs and one key per row
        keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(seeds, counters)
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        masked = jnp.where(allowed_mask(scaled, top_k[:, None], top_p[:, None]), scaled, -jnp.inf)
        drawn = jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)
        token = jnp.where(temperature > 0, drawn, token)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logprob


def run_step(graphdef, state, pools, tokens, start, page_table, last, seq_lengths, seeds, counters, temperature,
             top_k, top_p, vocab_limit, *, greedy_only: bool):
    """See the module docstring. seq_lengths (B,): LongRoPE's per-row choice of factors (`rope_tables`)."""
    model = nnx.merge(graphdef, state)
    b, t = tokens.shape
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # (B, T)
    cache = paged_kv.with_page_table(pools, page_table)
    hidden, cache = model.cached_hidden_states(tokens, positions=positions, cache=cache, seq_lengths=seq_lengths)
    logits = model.logits(hidden[jnp.arange(b), last][:, None])[:, 0]  # (B, V): only the picked index
    token, logprob = choose(logits, seeds, counters, temperature, top_k, top_p, vocab_limit,
                            greedy_only=greedy_only)
    return token, logprob, paged_kv.without_page_table(cache)


_program = jax.jit(run_step, static_argnums=0, static_argnames=("greedy_only",), donate_argnums=(2,))


def run_block(graphdef, state, pools, tokens, start, page_table, budget, stop_ids, steps, seq_lengths, seeds,
              counters, temperature, top_k, top_p, vocab_limit, *, width: int, greedy_only: bool):
    """See the module docstring: up to `width` decode iterations in one while_loop."""
    model = nnx.merge(graphdef, state)
    b = tokens.shape[0]

    def body(carry):
        i, token, alive, pools, out, logprobs = carry
        table = jnp.where(alive[:, None], page_table, paged_kv.TRASH_PAGE)  # a stopped row writes nowhere
        cache = paged_kv.with_page_table(pools, table)
        hidden, cache = model.cached_hidden_states(token[:, None], positions=(start + i)[:, None], cache=cache,
                                                   seq_lengths=seq_lengths)
        new, logprob = choose(model.logits(hidden)[:, 0], seeds, counters + i, temperature, top_k, top_p,
                              vocab_limit, greedy_only=greedy_only)
        out = out.at[:, i].set(jnp.where(alive, new, -1))
        logprobs = logprobs.at[:, i].set(logprob)
        stopped = jnp.any(new[:, None] == stop_ids, axis=1) | (i + 1 >= budget)
        return i + 1, new, alive & ~stopped, paged_kv.without_page_table(cache), out, logprobs

    def cond(carry):
        return (carry[0] < steps) & jnp.any(carry[2])

    init = (jnp.int32(0), tokens, budget > 0, pools, jnp.full((b, width), -1, jnp.int32),
            jnp.zeros((b, width), jnp.float32))
    _, _, _, pools, out, logprobs = jax.lax.while_loop(cond, body, init)
    return out, logprobs, pools


_block_program = jax.jit(run_block, static_argnums=0, static_argnames=("width", "greedy_only"), donate_argnums=(2,))


class StepRunner:
    """Holds the model's split state and the device page pools; runs `run_step` on host row lists."""

    def __init__(self, graphdef, state, pools: list[dict], vocab_limit: int):
        self.graphdef, self.state, self.pools = graphdef, state, pools
        self.vocab_limit = jnp.int32(vocab_limit)
        self.shapes: set[tuple] = set()  # (rows, tokens, pages, greedy_only) run or compiled: the compiled set

    def run(self, rows: list[dict], batch: int, width: int, pages: int) -> tuple[np.ndarray, np.ndarray]:
        """rows: dicts with tokens (list), start, table (list of page ids), last, seq_length, seed,
        counter, temperature, top_k, top_p; a row may be None (a padding row). Returns per-row
        token and logprob arrays (batch,)."""
        args, greedy_only = self._step_args(rows, batch, width, pages)
        self.shapes.add((batch, width, pages, greedy_only))
        token, logprob, self.pools = _program(*args, greedy_only=greedy_only)
        return np.asarray(token), np.asarray(logprob)

    def run_block(self, rows: list[dict], batch: int, pages: int, width: int, steps: int, stops: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Multi-step decode: rows as `run` (one token each) plus budget (tokens it may still make) and
        stops (its stop ids, at most `stops`). Returns (batch, width) tokens and logprobs, -1 after a
        row stopped and past `steps`."""
        args, greedy_only = self._block_args(rows, batch, pages, steps, stops)
        self.shapes.add((batch, -width, pages, greedy_only))  # -width: a block of width decode steps
        token, logprob, self.pools = _block_program(*args, width=width, greedy_only=greedy_only)
        return np.asarray(token), np.asarray(logprob)

    def compile(self, batch: int, width: int, pages: int, greedy_only: bool, stops: int = 4) -> None:
        """Compile, without running, the program `run` (width > 0) or `run_block` (width < 0: a block of
        -width steps) calls for these shapes; a later call with them finds it in JAX's cache. A block is
        compiled for up to `stops` stop ids per row (a request with more compiles its own at its first block)."""
        rows = [None] * batch
        if width > 0:
            args, _ = self._step_args(rows, batch, width, pages)
            _program.lower(*args, greedy_only=greedy_only).compile()
        else:
            args, _ = self._block_args(rows, batch, pages, 1, stops)
            _block_program.lower(*args, width=-width, greedy_only=greedy_only).compile()
        self.shapes.add((batch, width, pages, greedy_only))

    def _step_args(self, rows, batch, width, pages) -> tuple[tuple, bool]:
        a = _pack(rows, batch, width, pages)
        return (self.graphdef, self.state, self.pools, a["tokens"], a["start"], a["table"], a["last"],
                a["seq_length"], a["seed"], a["counter"], a["temperature"], a["top_k"], a["top_p"],
                self.vocab_limit), not np.any(a["temperature"] > 0)

    def _block_args(self, rows, batch, pages, steps, stops) -> tuple[tuple, bool]:
        a = _pack(rows, batch, 1, pages)
        budget = np.zeros(batch, np.int32)
        stop_ids = np.full((batch, stops), -1, np.int32)
        for i, row in enumerate(rows):
            if row is not None:
                budget[i] = row["budget"]
                stop_ids[i, :len(row["stops"])] = row["stops"]
        return (self.graphdef, self.state, self.pools, a["tokens"][:, 0], a["start"], a["table"], budget, stop_ids,
                np.int32(steps), a["seq_length"], a["seed"], a["counter"], a["temperature"], a["top_k"], a["top_p"],
                self.vocab_limit), not np.any(a["temperature"] > 0)


_FIELDS = {"start": np.int32, "last": np.int32, "seq_length": np.int32, "seed": np.uint32, "counter": np.int32,
           "temperature": np.float32, "top_k": np.int32, "top_p": np.float32}


def _pack(rows: list[dict | None], batch: int, width: int, pages: int) -> dict[str, np.ndarray]:
    """Host rows -> padded numpy arrays; padding rows feed token 0 to the trash page and are ignored."""
    out = {name: np.zeros(batch, dtype) for name, dtype in _FIELDS.items()}
    out["top_p"][:] = 1.0
    out["tokens"] = np.zeros((batch, width), np.int32)
    out["table"] = np.full((batch, pages), paged_kv.TRASH_PAGE, np.int32)
    for i, row in enumerate(rows):
        if row is None:
            continue
        out["tokens"][i, :len(row["tokens"])] = row["tokens"]
        out["table"][i, :len(row["table"])] = row["table"][:pages]
        for name in _FIELDS:
            out[name][i] = row[name]
    return out
