"""Compiled generation: one prefill program fills the KV cache, one decode program runs the loop.

Rows of different lengths are right-padded to a common width T and prefilled at positions
0 .. T-1; row b's first new token then goes to position len_b, overwriting the padding's
cache slot, and every later slot of that row is masked because attention only sees slots
<= the query position. So each row decodes at its own positions with no left padding.

    prefill(tokens (B, T), lengths (B,))  -> first token (B,) and the decode state
    decode(state, max_new_tokens)         -> tokens (B, N): one lax.while_loop, stopping
                                             when every row has hit a stop token

Shapes are bucketed (prompt width to a multiple of 32, new tokens to a multiple of 32) so
nearby requests reuse the compiled programs. Streaming uses an ordered io_callback in the
loop body (`jaxlm.inference.streaming`): the host sees each step's tokens as they are produced
and may ask to stop. LongRoPE models rebuild a row's cache with the long factors when that row
crosses the switch point (a step hook: `jaxlm.inference.longrope`).

The loop's state is a `DecodeState`; the per-call arrays that pick tokens are a `Sampler`, and the
static choices that shape a compiled program are `DecodeOptions`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from jaxlm import ops
from jaxlm.errors import memory_limit
from jaxlm.inference import checks, longrope
from jaxlm.inference.sampling import SamplingParams, next_token
from jaxlm.inference.streaming import SINKS, TokenCallback
from jaxlm.model import kv_cache
from jaxlm.model.layouts import to_unrolled
from jaxlm.ops.policy import policy

BUCKET = 32
CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")


class DecodeState(NamedTuple):
    """The decode loop's carry: one entry per row b of the batch."""

    cache: list  # per layer group (jaxlm.model.kv_cache)
    token: jax.Array  # (B,) the token fed at this step (a done row's last one)
    position: jax.Array  # (B,) the position it goes to
    seen: jax.Array  # (B, V) bool: ids in the prompt or output (repetition penalty)
    done: jax.Array  # (B,) bool: the row has produced a stop token
    history: jax.Array | None = None  # (B, n + 1): LongRoPE only (`longrope.after_step`)


class Sampler(NamedTuple):
    """The traced arrays that choose tokens: changing them does not recompile."""

    stops: jax.Array  # (B, K) int32 stop ids per row, -1 padded
    knobs: dict  # SamplingParams.as_arrays()
    key: jax.Array
    vocab_limit: jax.Array  # () int32: ids at or past it are never sampled (the tokenizer's size)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Static: each distinct value is its own compiled program."""

    cache_len: int = 0  # prefill: cache slots per row
    cache_dtype: str = "float32"  # prefill: kv_cache storage
    out_len: int = 0  # decode: width of the (B, out_len) output
    greedy: bool = True  # argmax (no sampling ops in the program)
    stream: bool = False  # decode: call the host after every step


@dataclasses.dataclass
class GenerationOutput:
    """tokens[b]: the new ids of row b, stop token excluded; finish_reasons[b]: "stop" or "length"."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    prompt_lengths: list[int]
    time_to_first_token_s: float  # prefill + first token, wall clock, compile included if it happened
    decode_s: float  # the decode loop (tokens 2..N), wall clock


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Engine:
    """Holds a model's split state and its compiled prefill / decode programs."""

    def __init__(self, model: nnx.Module, cache_dtype: str = "auto", vocab_limit: int | None = None,
                 layers: str = "auto"):
        """layers: "scan" runs each group of stacked layers as one lax.scan; "unroll" gives every layer
        its own weights (`jaxlm.model.layouts.to_unrolled`, a one-time copy) so a decode step reads each weight once
        on XLA:CPU; "auto" = the target platform's policy (`jaxlm.ops.policy`: decode_layers)."""
        checks.model("model", model)
        checks.choice("cache_dtype", cache_dtype, CACHE_DTYPES, "cache dtype")
        model = decode_layout(model, layers)
        self.cfg = model.cfg
        self.cache_dtype = self.cfg.compute_dtype if cache_dtype == "auto" else cache_dtype
        self.vocab_limit = vocab_limit or self.cfg.vocab_size
        self.graphdef, self.state = nnx.split(model)

    def check_request(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """The prompts as id lists, or an error naming the bad argument; nothing is compiled before this."""
        prompts = checks.prompt_ids(prompts, self.cfg.vocab_size)
        checks.integer("max_new_tokens", max_new_tokens, 1)
        for i, p in enumerate(prompts):
            if len(p) + max_new_tokens > self.cfg.max_context:
                raise checks.ArgumentValueError(
                    f"prompt {i} has {len(p)} tokens + max_new_tokens {max_new_tokens} = "
                    f"{len(p) + max_new_tokens}, over the model's context of {self.cfg.max_context}; "
                    f"shorten the prompt or lower max_new_tokens")
        return prompts

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                 sampling: SamplingParams = SamplingParams(),
                 stop_tokens: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 on_token: TokenCallback | None = None) -> GenerationOutput:
        """Generate up to max_new_tokens for each prompt (lists of token ids, any lengths).

        stop_tokens: ids that end a row (default: the model's eos), or one list per row.
        on_token: streaming callback, called once per step with that step's tokens.
        """
        prompts = self.check_request(prompts, max_new_tokens)
        if not isinstance(sampling, SamplingParams):
            raise checks.ArgumentTypeError(f"sampling must be a SamplingParams, got {checks.shown(sampling)}")
        stop_tokens = None if stop_tokens is None else checks.stop_tokens(stop_tokens, self.cfg.vocab_size)
        checks.callback("on_token", on_token)
        b = len(prompts)
        lengths = np.array([len(p) for p in prompts], np.int32)
        width = min(round_up(int(lengths.max()), BUCKET), self.cfg.max_context)
        out_len = round_up(max_new_tokens, BUCKET)
        cache_len = min(self.cfg.max_context, width + out_len)
        self._check_memory(b, width, cache_len)
        tokens = np.zeros((b, width), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = p
        stops = _stop_matrix(stop_tokens, b, self.cfg.eos_token_id)

        t0 = time.perf_counter()
        sampler = Sampler(jnp.asarray(stops), sampling.as_arrays(), jax.random.key(sampling.seed),
                          jnp.int32(self.vocab_limit))
        first, state = _prefill_program(self.graphdef, self.state, jnp.asarray(tokens), jnp.asarray(lengths),
                                        sampler, DecodeOptions(cache_len=cache_len, cache_dtype=self.cache_dtype,
                                                               greedy=sampling.greedy))
        first = np.asarray(first)
        ttft = time.perf_counter() - t0
        stopped = on_token is not None and bool(on_token(0, first, np.isin(first, stops)))

        sink_id = SINKS.register(on_token) if on_token is not None else 0
        t1 = time.perf_counter()
        try:
            n_new = 1 if stopped else max_new_tokens
            options = DecodeOptions(out_len=out_len, greedy=sampling.greedy, stream=on_token is not None)
            out = np.asarray(_decode_program(self.graphdef, self.state, state, sampler, jnp.int32(n_new),
                                             jnp.int32(sink_id), options))
        finally:
            SINKS.unregister(sink_id)
        decode_s = time.perf_counter() - t1
        return _collect(out, stops, max_new_tokens, lengths, ttft, decode_s)


    def _check_memory(self, b: int, width: int, cache_len: int) -> None:
        """Refuse, from the shapes, a batch whose KV cache and prefill activations cannot fit: on CPU the
        host's RAM, else the device memory JAX reports (unknown: no check). A lower bound, before compiling."""
        device = jax.local_devices()[0]
        have = memory_limit(device)
        widest = max(max(s.ffn_dim for s in self.cfg.layer_specs), self.cfg.model_dim)
        cache = kv_cache.cache_bytes(self.cfg, b, cache_len, self.cache_dtype)
        need = cache + b * width * (self.cfg.model_dim + widest) * 4 + b * self.cfg.vocab_size * 4
        if have and need > have:
            raise checks.ArgumentValueError(
                f"{b} prompts of up to {width} tokens (+ up to {cache_len - width} new) need at least "
                f"{need / 2 ** 30:.1f} GiB (KV cache {cache / 2 ** 30:.1f} GiB), more than the "
                f"{have / 2 ** 30:.1f} GiB of {'this host' if device.platform == 'cpu' else device.device_kind}; "
                f"generate fewer prompts at a time, or lower max_new_tokens or cache_dtype")


def decode_layout(model: nnx.Module, layers: str = "auto", platform: str | None = None) -> nnx.Module:
    """The model in the layer layout generation runs in (see `Engine`)."""
    checks.choice("layers", layers, ("auto", "scan", "unroll"), "layers layout")
    if layers == "auto":
        layers = policy(platform or ops.target_platform()).decode_layers
    return to_unrolled(model) if layers == "unroll" else model


def _stop_matrix(stop_tokens, b: int, eos: int) -> np.ndarray:
    """(B, K) int32 stop ids per row, padded with -1 (never a token)."""
    if stop_tokens is None:
        rows = [[eos]] * b
    elif len(stop_tokens) and isinstance(stop_tokens[0], (list, tuple)):
        if len(stop_tokens) != b:
            raise checks.ArgumentValueError(f"stop_tokens has {len(stop_tokens)} lists for {b} prompts; give one "
                                            f"per prompt")
        rows = [list(r) for r in stop_tokens]
    else:
        rows = [list(stop_tokens)] * b
    k = max(1, max(len(r) for r in rows))
    out = np.full((b, k), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def _collect(out: np.ndarray, stops: np.ndarray, max_new: int, lengths, ttft: float, decode_s: float
             ) -> GenerationOutput:
    tokens, reasons = [], []
    for row, stop in zip(out, stops):
        row = row[:max_new]
        hits = np.flatnonzero(np.isin(row, stop[stop >= 0]))
        end = int(hits[0]) if hits.size else int(np.sum(row >= 0))
        tokens.append(row[:end].tolist())
        reasons.append("stop" if hits.size else "length")
    return GenerationOutput(tokens, reasons, [int(n) for n in lengths], ttft, decode_s)


def prefill(graphdef, params, tokens, lengths, sampler: Sampler, options: DecodeOptions):
    """Run the padded prompts (B, T) through the model, filling a fresh cache; pick token 0.
    Returns (first tokens (B,), the DecodeState after them)."""
    model = nnx.merge(graphdef, params)
    b, t = tokens.shape
    cache = kv_cache.init_cache(model.cfg, b, options.cache_len, options.cache_dtype)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    hidden, cache = model.cached_hidden_states(tokens, positions=positions, cache=cache,
                                               seq_lengths=lengths)  # (B, T, D)
    # Project only each row's last real token: (B, 1, D) -> (B, V), not (B, T, V) logits.
    last = model.logits(hidden[jnp.arange(b), lengths - 1][:, None])[:, 0]
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    seen = jnp.zeros(last.shape, bool).at[jnp.arange(b)[:, None], tokens].max(valid)
    first = _pick(last, seen, sampler, 0, options.greedy)
    seen = seen.at[jnp.arange(b), first].set(True)
    done = jnp.any(first[:, None] == sampler.stops, axis=-1)
    switch = longrope.switch_position(model.cfg, options.cache_len)
    history = None if switch is None else longrope.initial_history(tokens, switch)
    return first, DecodeState(cache, first, lengths, seen, done, history)


class _Loop(NamedTuple):
    step: jax.Array  # () int32: tokens produced so far
    state: DecodeState
    out: jax.Array  # (B, out_len) ids, -1 after a row is done
    halt: jax.Array  # () bool: the host asked to stop


def decode(graphdef, params, state: DecodeState, sampler: Sampler, max_new, sink_id, options: DecodeOptions):
    """Tokens 1 .. max_new-1 in one while_loop. Returns (B, out_len) ids: -1 after a row is done."""
    model = nnx.merge(graphdef, params)
    b = state.token.shape[0]
    out = jnp.full((b, options.out_len), -1, jnp.int32).at[:, 0].set(state.token)

    def cond(loop: _Loop):
        return (loop.step < max_new) & ~jnp.all(loop.state.done) & ~loop.halt

    def body(loop: _Loop):
        tok, state = decode_step(model, loop.state, loop.step, sampler, options.greedy)
        out = jax.lax.dynamic_update_slice(loop.out, tok[:, None], (0, loop.step))
        halt = jnp.bool_(False)
        if options.stream:
            halt = io_callback(SINKS.emit, jax.ShapeDtypeStruct((), jnp.bool_), sink_id, loop.step, tok, state.done,
                               ordered=True)
        return _Loop(loop.step + 1, state, out, halt)

    return jax.lax.while_loop(cond, body, _Loop(jnp.int32(1), state, out, jnp.bool_(False))).out


def decode_step(model, state: DecodeState, step, sampler: Sampler, greedy: bool):
    """One token per row: the decode loop's body (and what `jaxlm.inference.cost` compiles).
    Returns this step's ids (B,) (-1 for rows already done) and the next state."""
    b = state.token.shape[0]
    logits, cache = model.cached(state.token[:, None], positions=state.position[:, None], cache=state.cache)
    history = state.history
    if history is not None:
        history, logits, cache = longrope.after_step(model, history, state.token, state.position, state.done,
                                                     logits, cache)
    tok = jnp.where(state.done, -1, _pick(logits[:, 0], state.seen, sampler, step, greedy))
    done = state.done | jnp.any(tok[:, None] == sampler.stops, axis=-1)
    seen = state.seen.at[jnp.arange(b), jnp.maximum(tok, 0)].max(tok >= 0)
    return tok, DecodeState(cache, jnp.maximum(tok, 0), state.position + 1, seen, done, history)


def _pick(logits, seen, sampler: Sampler, step, greedy: bool):
    return next_token(logits, seen, jax.random.fold_in(sampler.key, step), sampler.knobs, greedy=greedy,
                      vocab_limit=sampler.vocab_limit)


# Module-level, keyed on the graphdef: engines over models of the same architecture share programs.
_prefill_program = jax.jit(prefill, static_argnums=(0, 5))
_decode_program = jax.jit(decode, static_argnums=(0, 6))
