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
loop body: the host sees each step's tokens as they are produced and may ask to stop.
LongRoPE models rebuild a row's cache with the long factors when that row crosses the switch
point (`_rebuild_crossing_rows`, as transformers' Phi-3 does; docs/inference.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from jaxlm import ops
from jaxlm.errors import memory_limit
from jaxlm.inference import checks
from jaxlm.inference.sampling import SamplingParams, next_token
from jaxlm.model import kv_cache
from jaxlm.model.unstack import unstacked

BUCKET = 32
# Layer layout for generation per target platform ("auto"). cpu (measured, docs/inference.md): a
# scanned decode step copies each layer's weights out of the stack (cost analysis: 3x the weight
# bytes), unrolled reads them once. gpu / tpu (reasoned, unmeasured): their compilers feed a
# dynamic slice straight into the matmul, and a scan keeps compile time flat in depth.
LAYERS = {"cpu": "unroll", "gpu": "scan", "tpu": "scan"}
CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
# on_token(step, tokens (B,) np.int32, done (B,) np.bool_) -> True to stop early.
TokenCallback = Callable[[int, np.ndarray, np.ndarray], "bool | None"]

_sinks: dict[int, TokenCallback] = {}
_sink_ids = itertools.count(1)
_sink_lock = threading.Lock()


def _emit(sink_id, step, tokens, done):
    """Host side of the streaming callback: forward one step to the registered Python callable."""
    stop = _sinks[int(sink_id)](int(step), np.asarray(tokens), np.asarray(done))
    return np.bool_(bool(stop))


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
        its own weights (`jaxlm.model.unstack`, a one-time copy) so a decode step reads each weight once
        on XLA:CPU; "auto" = the `LAYERS` entry of the target platform."""
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
        knobs = sampling.as_arrays()
        key = jax.random.key(sampling.seed)
        limit = jnp.int32(self.vocab_limit)

        t0 = time.perf_counter()
        stops_j = jnp.asarray(stops)
        first, carry = _prefill_program(self.graphdef, self.state, jnp.asarray(tokens), jnp.asarray(lengths),
                                        stops_j, knobs, key, limit, cache_len=cache_len,
                                        cache_dtype=self.cache_dtype, greedy=sampling.greedy)
        first = np.asarray(first)
        ttft = time.perf_counter() - t0
        stopped = on_token is not None and bool(on_token(0, first, np.isin(first, stops)))

        sink_id = 0
        if on_token is not None:
            with _sink_lock:
                sink_id = next(_sink_ids)
                _sinks[sink_id] = on_token
        t1 = time.perf_counter()
        try:
            n_new = 1 if stopped else max_new_tokens
            out = _decode_program(self.graphdef, self.state, carry, stops_j, knobs, key, limit, jnp.int32(n_new),
                                  jnp.int32(sink_id), out_len=out_len, greedy=sampling.greedy,
                                  stream=on_token is not None)
            out = np.asarray(out)
        finally:
            _sinks.pop(sink_id, None)
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
        layers = LAYERS.get(platform or ops.target_platform(), "scan")
    return unstacked(model) if layers == "unroll" else model


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


def prefill(graphdef, state, tokens, lengths, stops, knobs, key, vocab_limit, *, cache_len: int,
             cache_dtype: str, greedy: bool):
    """Run the padded prompts (B, T) through the model, filling a fresh cache; pick token 0."""
    model = nnx.merge(graphdef, state)
    b, t = tokens.shape
    cache = kv_cache.init_cache(model.cfg, b, cache_len, cache_dtype)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    hidden, cache = model.hidden_states(tokens, positions=positions, cache=cache, seq_lengths=lengths)  # (B, T, D)
    # Project only each row's last real token: (B, 1, D) -> (B, V), not (B, T, V) logits.
    last = model.logits(hidden[jnp.arange(b), lengths - 1][:, None])[:, 0]
    valid = jnp.arange(t)[None, :] < lengths[:, None]
    seen = jnp.zeros(last.shape, bool).at[jnp.arange(b)[:, None], tokens].max(valid)
    first = next_token(last, seen, jax.random.fold_in(key, 0), knobs, greedy=greedy, vocab_limit=vocab_limit)
    seen = seen.at[jnp.arange(b), first].set(True)
    done = jnp.any(first[:, None] == stops, axis=-1)
    carry = {"cache": cache, "token": first, "position": lengths, "seen": seen, "done": done}
    switch = _longrope_switch(model.cfg, cache_len)
    if switch is not None:  # the tokens a row recomputes when it crosses the switch (see _rebuild_crossing_rows)
        m = min(t, switch + 1)
        carry["history"] = jnp.zeros((b, switch + 1), jnp.int32).at[:, :m].set(tokens[:, :m])
    return first, carry


def decode(graphdef, state, carry, stops, knobs, key, vocab_limit, max_new, sink_id, *, out_len: int,
            greedy: bool, stream: bool):
    """Tokens 1 .. max_new-1 in one while_loop. Returns (B, out_len) ids: -1 after a row is done."""
    model = nnx.merge(graphdef, state)
    b = carry["token"].shape[0]
    out = jnp.full((b, out_len), -1, jnp.int32).at[:, 0].set(carry["token"])

    def cond(c):
        step, _, _, halt = c
        return (step < max_new) & ~jnp.all(c[1]["done"]) & ~halt

    def body(c):
        step, s, out, _ = c
        tok, s = decode_step(model, s, step, stops, knobs, key, vocab_limit, greedy=greedy)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, step))
        halt = jnp.bool_(False)
        if stream:
            halt = io_callback(_emit, jax.ShapeDtypeStruct((), jnp.bool_), sink_id, step, tok, s["done"],
                               ordered=True)
        return step + 1, s, out, halt

    _, _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), carry, out, jnp.bool_(False)))
    return out


def decode_step(model, s: dict, step, stops, knobs, key, vocab_limit, *, greedy: bool):
    """One token per row: the decode loop's body (and what `jaxlm.inference.cost` compiles).

    s: the decode state (cache, token, position, seen, done[, history]). Returns this step's ids
    (B,) (-1 for rows already done) and the next state.
    """
    b = s["token"].shape[0]
    logits, cache = model(s["token"][:, None], positions=s["position"][:, None], cache=s["cache"])
    if "history" in s:
        history = s["history"].at[jnp.arange(b), s["position"]].set(s["token"], mode="drop")
        logits, cache = _rebuild_crossing_rows(model, history, s["position"], s["done"], logits, cache)
    tok = next_token(logits[:, 0], s["seen"], jax.random.fold_in(key, step), knobs, greedy=greedy,
                     vocab_limit=vocab_limit)
    tok = jnp.where(s["done"], -1, tok)
    done = s["done"] | jnp.any(tok[:, None] == stops, axis=-1)
    seen = s["seen"].at[jnp.arange(b), jnp.maximum(tok, 0)].max(tok >= 0)
    new = {**s, "cache": cache, "token": jnp.maximum(tok, 0), "position": s["position"] + 1, "seen": seen,
           "done": done}
    if "history" in s:
        new["history"] = history
    return tok, new


def _longrope_switch(cfg, cache_len: int) -> int | None:
    """LongRoPE's switch position (original_max_position) when a decode over a cache of cache_len
    slots can reach it, else None."""
    rs = cfg.rope_scaling
    return rs.original_max_position if rs.type == "longrope" and cache_len > rs.original_max_position else None


def _rebuild_crossing_rows(model, history, position, done, logits, cache):
    """LongRoPE across the switch: a row now feeding position n = original_max_position (its sequence
    first exceeds n) drops its cache and recomputes it, and this step's logits, from its n + 1 tokens
    with the long factors; later steps decode with long factors against that cache. This is what
    transformers' Phi3ForCausalLM.prepare_inputs_for_generation does, per row here (docs/inference.md).

    history (B, n + 1) token ids, position / done (B,), logits (B, 1, V), cache: the batch's.
    """
    n1 = history.shape[1]
    crossing = (position == n1 - 1) & ~done

    def rebuild(i, carry):
        logits, cache = carry
        fresh = kv_cache.init_cache(model.cfg, 1, n1, cache[0]["k"].dtype)
        row = jax.lax.dynamic_slice_in_dim(history, i, 1)  # (1, n + 1)
        hidden, fresh = model.hidden_states(row, positions=jnp.arange(n1)[None], cache=fresh)
        logits = logits.at[i].set(model.logits(hidden[:, -1:])[0])
        # Slots 0 .. n of row i: cache arrays are (L, B, Hkv, S[, D]), the fresh ones (L, 1, Hkv, n + 1[, D]).
        cache = jax.tree.map(lambda old, new: jax.lax.dynamic_update_slice(old, new, (0, i) + (0,) * (old.ndim - 2)),
                             cache, fresh)
        return logits, cache

    def maybe(i, carry):
        return jax.lax.cond(crossing[i], rebuild, lambda i, c: c, i, carry)

    return jax.lax.fori_loop(0, history.shape[0], maybe, (logits, cache))


# Module-level, keyed on the graphdef: engines over models of the same architecture share programs.
_prefill_program = jax.jit(prefill, static_argnums=0, static_argnames=("cache_len", "cache_dtype", "greedy"))
_decode_program = jax.jit(decode, static_argnums=0, static_argnames=("out_len", "greedy", "stream"))
