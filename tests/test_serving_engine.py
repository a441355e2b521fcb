"""The serving engine (jaxlm/serving): continuous batching over a paged KV cache gives every request
exactly the greedy tokens the static engine gives it alone, for every family (per-layer heads,
sliding window, LongRoPE, quantized weights, int8 cache), with chunked prefill and prefix caching;
pages return to zero; cancel, a full queue and bad requests behave."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from inference_util import random_model

import jaxlm
from jaxlm.assets import resolve_path
from jaxlm.checkpoint import save_model
from jaxlm.cli.main import main
from jaxlm.config import RunConfig
from jaxlm.errors import JaxlmError
from jaxlm.inference import LanguageModel
from jaxlm.inference.engine import Engine
from jaxlm.model import ModelConfig, RopeScaling, kv_cache, paged_kv
from jaxlm.serving import QueueFull, RequestParams, ServingEngine

TOKENIZER = resolve_path("bundled:tokenizer/tokenizer.model")
# Per-layer heads (OpenELM) and a sliding window (Phi-3) in the model of the default run.
LAYERWISE = ModelConfig(name="serve_lw", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16,
                        num_query_heads=(2, 4), num_kv_heads=(1, 2), ffn_dim=(64, 128), max_context=128,
                        sliding_window=24)
UNIFORM = ModelConfig(name="serve_u", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16, num_query_heads=4,
                      num_kv_heads=2, ffn_dim=128, max_context=128)
SLIDING = dataclasses.replace(UNIFORM, name="serve_sw", sliding_window=8)
LONGROPE = dataclasses.replace(UNIFORM, name="serve_lr", rope_scaling=RopeScaling(
    type="longrope", original_max_position=32, short_factor=tuple(1.0 + i / 8 for i in range(8)),
    long_factor=tuple(2.0 + i for i in range(8))))
ENGINE = dict(max_slots=4, page_size=8, prefill_chunk=16)  # shapes shared by most tests: fewer compiles


@pytest.fixture(scope="module")
def lm(tok):
    return LanguageModel(random_model(LAYERWISE, seed=1), tok)


def prompts_of(n: int, seed: int, low: int, high: int, shared: list[int] | None = None) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    out = [rng.integers(3, 2000, int(rng.integers(low, high))).tolist() for _ in range(n)]
    return [(shared or []) + p for p in out] if shared else out


def alone(lm, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens of the static engine for this prompt alone."""
    return lm.generate_ids([prompt], n).tokens[0]


def serve(engine: ServingEngine, prompts, lengths, arrivals=None, params=None):
    """Submit prompt i at step arrivals[i] (default all at once), step until done; the completions."""
    arrivals = arrivals or [0] * len(prompts)
    handles, step = {}, 0
    while len(handles) < len(prompts) or not all(h.done for h in handles.values()):
        for i, at in enumerate(arrivals):
            if at == step and i not in handles:
                p = params[i] if params else RequestParams(max_tokens=lengths[i])
                handles[i] = engine.submit(prompts[i], p)
        engine.step()
        step += 1
        assert step < 2000, "the engine does not finish"
    return [handles[i].result() for i in range(len(prompts))]


def check_alone(lm, engine, prompts, lengths, arrivals=None):
    got = serve(engine, prompts, lengths, arrivals)
    for i, (p, n, c) in enumerate(zip(prompts, lengths, got)):
        assert c.token_ids == alone(lm, p, n), f"request {i} (prompt {len(p)}, max_tokens {n})"
        assert c.text == lm.continuation_text(p, c.token_ids)
    stats = engine.stats()
    assert stats.pages_in_use == 0 and stats.running == 0 and stats.waiting == 0
    return got


@pytest.mark.parametrize("prefix_cache, chunk", [(False, 16), (True, 8)])
def test_32_staggered_requests_each_get_their_greedy_tokens_alone(lm, prefix_cache, chunk):
    """Different prompt lengths (half behind a shared 16-token system prompt), output lengths and arrival
    steps; chunked prefill forced to 8 tokens in one run, with the prefix cache on. Prompts up to 32 tokens
    and outputs up to 23 cross the window of 24."""
    system = prompts_of(1, 7, 16, 17)[0]
    prompts = prompts_of(16, 1, 2, 33) + prompts_of(16, 2, 1, 17, shared=system)
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 24, 32).tolist()
    arrivals = sorted(rng.integers(0, 40, 32).tolist())
    engine = ServingEngine(lm, **{**ENGINE, "prefill_chunk": chunk}, prefix_cache=prefix_cache)
    check_alone(lm, engine, prompts, lengths, arrivals)
    stats = engine.stats()
    assert stats.requests_finished_total == 32 and stats.tokens_generated_total == sum(lengths)
    assert (stats.prefix_cache_hits > 0) == prefix_cache
    assert len(engine.compiled_shapes) <= 9, engine.compiled_shapes  # decode, blocks, prefill: 1, 2, 4 rows each


def test_prefix_cache_hits_rise_for_a_shared_system_prompt_and_outputs_stay(lm):
    system = prompts_of(1, 11, 24, 25)[0]  # 3 full pages of 8
    prompts = prompts_of(4, 12, 1, 8, shared=system)
    engine = ServingEngine(lm, **ENGINE)
    check_alone(lm, engine, prompts[:1], [5])
    assert engine.stats().prefix_cache_hits == 0
    check_alone(lm, engine, prompts[1:], [5, 5, 5])  # each reuses the first request's 3 system pages
    assert engine.stats().prefix_cache_hits == 9
    assert engine.stats().pages_cached >= 3


@pytest.mark.slow  # default-run cover: the 32-request test (per-layer heads, window), test_paged_update_*
@pytest.mark.parametrize("name", ["full_attention", "sliding_window", "longrope_short", "int8_cache",
                                  "quantized_dir", "scan_layers"])
def test_every_family_matches_the_static_engine(tok, tmp_path, name):
    cfg = {"sliding_window": SLIDING, "longrope_short": LONGROPE}.get(name, UNIFORM)
    model = random_model(cfg, seed=2)
    if name == "quantized_dir":  # `jaxlm quantize` output, loaded as a user would
        save_model(tmp_path / "float", RunConfig(model=cfg), model, extra_files=[TOKENIZER])
        assert main(["quantize", "--ckpt", str(tmp_path / "float"), "--out", str(tmp_path / "q4"), "--bits", "4",
                     "--group", "32"]) in (0, None)
        lm = jaxlm.load(tmp_path / "q4")
    else:
        lm = LanguageModel(model, tok, cache_dtype="int8" if name == "int8_cache" else "auto")
    layers = "unroll"
    if name == "scan_layers":  # one scanned group, the page table broadcast over its layers
        lm.engine, layers = Engine(model, layers="scan", vocab_limit=tok.vocab_size), "scan"
    prompts = prompts_of(6, 5, 2, 20)  # longer than the window of 8; LongRoPE: prompt + max_tokens <= 32
    check_alone(lm, ServingEngine(lm, **ENGINE, layers=layers), prompts, [10] * 6)


@pytest.mark.slow  # default-run cover: test_longrope_policy_is_fixed_per_request
def test_longrope_requests_past_the_switch_run_long_factors_from_the_start(tok):
    """prompt + max_tokens > original_max_position: the tokens are those of a full recompute with the
    long factors at every step (the documented policy), not the static engine's mid-way rebuild."""
    model = random_model(LONGROPE, seed=2)
    lm = LanguageModel(model, tok)
    prompts = prompts_of(2, 9, 20, 30)
    got = serve(ServingEngine(lm, **ENGINE), prompts, [12, 12])
    graphdef, state = nnx.split(model)

    @jax.jit
    def greedy_next(state, tokens, n, rope_length):  # tokens (1, 48) right-padded: causal, so padding is unseen
        m = nnx.merge(graphdef, state)
        hidden = m.hidden_states(tokens, seq_lengths=rope_length[None])
        return jnp.argmax(m.logits(hidden[:, n - 1][:, None])[0, 0, :tok.vocab_size])

    for p, c in zip(prompts, got):
        seq = list(p)
        for _ in range(12):
            tokens = jnp.asarray([seq + [0] * (48 - len(seq))])
            seq.append(int(greedy_next(state, tokens, len(seq), jnp.int32(len(p) + 12))))
        assert c.token_ids == seq[len(p):]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_paged_update_writes_through_the_table_and_views_like_the_contiguous_cache(dtype):
    """The device half alone, under lax.scan over a stacked group (the TPU / GPU layout): writes through
    page tables, then the views, give the contiguous cache's keys and values, float or int8."""
    rng = np.random.default_rng(0)
    table = jnp.asarray([[3, 1, 5, 0], [2, 6, 0, 0]], jnp.int32)  # row 0 holds 12 slots, row 1 holds 8
    steps = (([3, 0], 6), ([9, 6], 1))  # a prefill chunk, then one decode token per row
    kv = [jnp.asarray(rng.standard_normal((2, 2, t, 2, 16)), jnp.float32) for _, t in steps]

    def scan_update(update, cache, k, v, start):  # as the model's lax.scan over the group's layers runs it
        _, (cache, k_all, v_all) = jax.lax.scan(lambda _, layer: (None, update(layer, k, v, start)), None, cache)
        return cache, k_all, v_all

    def paged_update(layer, k, v, start):  # the gathered views, as ops.cached_attention takes them off the TPU
        layer, k_pages, v_pages = paged_kv.update_layer(layer, k, v, start)
        return layer, k_pages.view(k.dtype), v_pages.view(v.dtype)

    @jax.jit
    def run(kv):
        paged = paged_kv.with_page_table(paged_kv.init_pages(UNIFORM, 7, 4, dtype), table)[0]  # page 0: trash
        contiguous = kv_cache.init_cache(UNIFORM, 2, 16, dtype)[0]  # 2 stacked layers
        out = []
        for (start, _), (k, v) in zip(steps, kv):
            start = jnp.asarray(start, jnp.int32)
            paged, k_pg, v_pg = scan_update(paged_update, paged, k, v, start)
            contiguous, k_ref, v_ref = scan_update(kv_cache.update_layer, contiguous, k, v, start)
            out.append((k_pg, v_pg, k_ref, v_ref))
        return out, paged

    out, paged = run(kv)
    for (start, t), (k_pg, v_pg, k_ref, v_ref) in zip(steps, out):
        for b, end in enumerate(np.asarray(start) + t):  # (L, B, Hkv, S, D): every slot written so far agrees
            np.testing.assert_array_equal(k_pg[:, b, :, :end], k_ref[:, b, :, :end])
            np.testing.assert_array_equal(v_pg[:, b, :, :end], v_ref[:, b, :, :end])
    assert not np.asarray(paged["k"][:, :, 4]).any()  # page 4 is in no table: untouched
    assert set(paged_kv.without_page_table([paged])[0]) == {"k", "v"} | ({"k_scale", "v_scale"} if dtype == "int8"
                                                                          else set())


def test_longrope_policy_is_fixed_per_request(tok):
    """A request whose prompt + max_tokens passes original_max_position gets the long factors for all its
    tokens (its seq_length), and its prompt pages a prefix-cache key apart from the short ones."""
    engine = ServingEngine(LanguageModel(random_model(LONGROPE, seed=2), tok), **ENGINE)
    short = engine._request(list(range(3, 19)), RequestParams(max_tokens=16), "a", None, 0)
    long = engine._request(list(range(3, 19)), RequestParams(max_tokens=17), "b", None, 1)
    assert (short.rope_length, long.rope_length) == (32, 33)  # rope_tables: long when > 32
    assert short.hashes[0] != long.hashes[0] and len(short.hashes) == 2


def test_64_short_requests_fit_in_the_pages_of_8_full_context_rows(lm):
    """Memory follows the tokens in flight: a pool sized for a static batch of 8 rows of the full context
    holds 64 concurrent short requests, with no preemption."""
    pages_8_rows = 8 * LAYERWISE.max_context // 8
    engine = ServingEngine(lm, max_slots=64, page_size=8, num_pages=pages_8_rows, prefill_chunk=16,
                           prefill_budget=64 * 16)
    prompts = prompts_of(64, 21, 2, 8)
    handles = [engine.submit(p, RequestParams(max_tokens=6)) for p in prompts]
    peak_running, peak_pages = 0, 0
    while not all(h.done for h in handles):
        engine.step()
        stats = engine.stats()
        peak_running, peak_pages = max(peak_running, stats.running), max(peak_pages, stats.pages_in_use)
    assert peak_running == 64 and engine.stats().preemptions == 0
    assert peak_pages <= pages_8_rows and engine.stats().pages_in_use == 0
    for p, h in zip(prompts[:4], handles):
        assert h.result().token_ids == alone(lm, p, 6)


def test_preemption_when_pages_run_out_keeps_greedy_outputs(lm):
    engine = ServingEngine(lm, **ENGINE, num_pages=8, prefill_budget=16)  # a small pool: its own programs
    prompts = prompts_of(4, 31, 10, 14)
    check_alone(lm, engine, prompts, [20] * 4)
    assert engine.stats().preemptions > 0


def test_cancel_frees_the_slot_and_pages_within_one_step(lm):
    engine = ServingEngine(lm, **ENGINE)
    events = []
    handle = engine.submit(prompts_of(1, 41, 30, 31)[0], RequestParams(max_tokens=50), on_event=events.append)
    waiting = engine.submit([5, 6, 7], RequestParams(max_tokens=50))
    for _ in range(3):
        engine.step()
    assert engine.stats().running == 2 and engine.stats().pages_in_use > 0
    handle.cancel()
    waiting.cancel()
    engine.step()
    assert engine.stats().running == 0 and engine.stats().pages_in_use == 0
    assert events[-1].finish_reason == "cancelled" and events[-1].token_id is None
    assert handle.result(timeout=1).finish_reason == "cancelled"
    assert [e.finish_reason for e in handle.events(timeout=1)][-1] == "cancelled"


def test_a_full_queue_raises_queue_full_and_the_engine_still_serves(lm):
    engine = ServingEngine(lm, max_queue=2, **ENGINE)
    engine.submit([5, 6], RequestParams(max_tokens=2))
    engine.submit([5, 7], RequestParams(max_tokens=2))
    with pytest.raises(QueueFull, match="queue is full"):
        engine.submit([5, 8], RequestParams(max_tokens=2))
    while engine.has_work():
        engine.step()
    assert engine.submit([5, 8], RequestParams(max_tokens=2)).prompt_tokens == 2


@pytest.mark.parametrize("make, match", [
    (lambda e: e.submit([], RequestParams()), "prompt_ids is empty"),
    (lambda e: e.submit([1, 4000], RequestParams()), "prompt_ids has token id 4000 outside"),
    (lambda e: e.submit([1], RequestParams(max_tokens=0)), "max_tokens must be >= 1"),
    (lambda e: e.submit([1] * 100, RequestParams(max_tokens=40)), "max_tokens 40 .* over the context of 128"),
    (lambda e: e.submit([1], RequestParams(temperature=-1)), "temperature must be"),
    (lambda e: e.submit([1], RequestParams(top_p=0)), "top_p must be"),
    (lambda e: e.submit([1], RequestParams(stop_token_ids=(5000,))), "stop_token_ids has token id 5000"),
    (lambda e: e.submit([1], {"max_tokens": 3}), "params must be a RequestParams"),
])
def test_bad_requests_raise_one_line_errors_naming_the_field(lm, make, match):
    engine = ServingEngine(lm, **ENGINE)
    with pytest.raises(JaxlmError, match=match) as err:
        make(engine)
    assert "\n" not in str(err.value)


def test_sampling_is_per_request_seeded_and_logprobs_are_the_models(lm):
    engine = ServingEngine(lm, **ENGINE, prefill_budget=16)  # one prefill row per step: one more program
    prompts = prompts_of(3, 51, 4, 12)
    knobs = RequestParams(max_tokens=8, temperature=0.9, top_p=0.95, top_k=50, seed=7, logprobs=True)
    together = engine.generate(prompts, knobs)
    alone_first = engine.generate(prompts[:1], knobs)[0]
    assert alone_first.token_ids == together[0].token_ids  # a row's draws do not depend on its neighbours
    assert engine.generate(prompts[:1], dataclasses.replace(knobs, seed=8))[0].token_ids != together[0].token_ids
    greedy = engine.generate(prompts[:1], RequestParams(max_tokens=8, logprobs=True))[0]
    top1 = engine.generate(prompts[:1], dataclasses.replace(knobs, top_k=1))[0]
    assert top1.token_ids == greedy.token_ids
    seq = prompts[0] + greedy.token_ids
    logits = np.asarray(lm.model(jnp.asarray([seq])), np.float64)[0, len(prompts[0]) - 1:-1, :lm.tokenizer.vocab_size]
    ref = logits - logits.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(greedy.logprobs, ref[np.arange(8), greedy.token_ids], atol=1e-4)


def test_stop_strings_and_ids_end_requests_and_the_text_deltas_join(lm):
    engine = ServingEngine(lm, **ENGINE)
    prompt = lm.tokenizer.encode("To be, or not to be", add_bos=True)
    free = engine.generate([prompt], RequestParams(max_tokens=20))[0]
    cut = free.text[len(free.text) // 2:][:3]
    stop_at = free.token_ids[5]
    events = []
    handle = engine.submit(prompt, RequestParams(max_tokens=20, stop=(cut,)), on_event=events.append)
    by_id = engine.submit(prompt, RequestParams(max_tokens=20, stop_token_ids=(stop_at,)))
    while engine.has_work():
        engine.step()
    c = handle.result()
    assert c.finish_reason == "stop" and c.text == free.text[:free.text.index(cut)]
    assert "".join(e.text for e in events) == c.text and events[-1].finish_reason == "stop"
    d = by_id.result()
    assert d.finish_reason == "stop" and d.token_ids == free.token_ids[:free.token_ids.index(stop_at)]


def test_multi_step_decode_gives_exactly_the_single_step_tokens_and_frees_pages(lm):
    """decode_steps=8 runs blocks of 8 decode tokens in one call; every request ends exactly as with
    decode_steps=1: greedy and seeded sampling, a stop id and max_tokens mid-block, a stop string (its
    block's later tokens dropped)."""
    prompt = lm.tokenizer.encode("To be, or not to be", add_bos=True)
    single = ServingEngine(lm, **ENGINE, decode_steps=1)
    free = single.generate([prompt], RequestParams(max_tokens=20))[0]
    params = [RequestParams(max_tokens=20), RequestParams(max_tokens=11),
              RequestParams(max_tokens=20, stop=(free.text[len(free.text) // 2:][:3],)),
              RequestParams(max_tokens=20, stop_token_ids=(free.token_ids[5],)),
              RequestParams(max_tokens=13, temperature=0.9, top_p=0.95, top_k=50, seed=3, logprobs=True)]
    prompts = [prompt] * 4 + prompts_of(1, 71, 4, 12)
    want = single.generate(prompts, params)
    multi = ServingEngine(lm, **ENGINE)
    got = multi.generate(prompts, params)
    assert [c.finish_reason for c in got] == ["length", "length", "stop", "stop", "length"]
    for w, g in zip(want, got):
        assert (g.token_ids, g.text, g.finish_reason) == (w.token_ids, w.text, w.finish_reason)
    np.testing.assert_allclose(got[-1].logprobs, want[-1].logprobs, atol=1e-5)
    assert any(width < 0 for _, width, _, _ in multi.compiled_shapes)  # blocks ran
    assert multi.stats().pages_in_use == 0 and multi.stats().running == 0


@pytest.mark.slow  # covered: the engine tests compile the same programs on demand
def test_warmup_compiles_every_program_a_run_then_calls(lm):
    engine = ServingEngine(lm, **ENGINE)
    assert engine.warmup(sampled=False) == len(engine.compiled_shapes) == 15  # decode, block: 3 rows x 2 views
    compiled = set(engine.compiled_shapes)
    rng = np.random.default_rng(5)
    check_alone(lm, engine, prompts_of(8, 81, 1, 60), rng.integers(1, 30, 8).tolist(), list(range(0, 16, 2)))
    assert engine.compiled_shapes == compiled


def test_the_background_thread_serves_streams_and_shuts_down(lm):
    engine = ServingEngine(lm, **ENGINE)
    engine.start()
    prompts = prompts_of(3, 61, 4, 12)
    handles = [engine.submit(p, RequestParams(max_tokens=6)) for p in prompts]
    for p, h in zip(prompts, handles):
        events = list(h.events(timeout=60))
        assert [e.token_id for e in events if e.token_id is not None] == alone(lm, p, 6)
        assert events[-1].finish_reason is not None
    long = engine.submit(prompts[0], RequestParams(max_tokens=100))
    engine.shutdown(timeout_s=0.0)
    assert long.result(timeout=10).finish_reason == "cancelled"
    assert engine.stats().pages_in_use == 0
    with pytest.raises(JaxlmError, match="shutting down"):
        engine.submit([5], RequestParams())


def test_the_pallas_tpu_paged_kernel_matches_the_gathered_view(monkeypatch):
    """ops.cached_attention on a paged cache: impl "pallas" on a TPU target runs JAX's paged-attention kernel
    on the pages in place (here in the TPU interpreter), "xla" gathers the rows' pages; they agree (the kernel
    reads K and V in bfloat16). head_dim 128: the kernel's TPU block rule."""
    from jaxlm import ops

    monkeypatch.setenv("JAXLM_PALLAS_INTERPRET", "tpu")
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 1, 4, 128)), jnp.float32)  # (B, 1, Hq, D), 2 query heads per kv head
    table = jnp.asarray([[3, 1, 5, 7, 9, 0, 0, 0], [2, 6, 11, 0, 0, 0, 0, 0]], jnp.int32)  # 8 pages of 16 per row
    k, v = (ops.paged.PagedKV(jnp.asarray(rng.standard_normal((2, 12, 16, 128)), jnp.float32), table)
            for _ in range(2))
    positions = jnp.asarray([[70], [33]], jnp.int32)
    kernel = ops.cached_attention(q, k, v, positions, impl="pallas")
    view = ops.cached_attention(q, k, v, positions, impl="xla")
    np.testing.assert_allclose(kernel, view, atol=2e-2)
    wrong = ops.cached_attention(q, k, v, positions - 1, impl="pallas")  # one position short: not the same
    assert float(jnp.max(jnp.abs(wrong - view))) > 0.1


@pytest.mark.slow  # default-run cover: test_the_pallas_tpu_paged_kernel_matches_the_gathered_view
def test_jaxlm_compile_serve_has_the_mosaic_paged_kernel_and_counts_pages():
    import subprocess
    import sys

    pytest.importorskip("libtpu")
    out = subprocess.run([sys.executable, "-m", "jaxlm.cli.main", "compile", "tiny_uniform", "--topology", "v5e:2x2",
                          "--serve", "--max-slots", "4", "--set", "model.num_layers=2", "--set", "model.head_dim=128",
                          "--set", "model.attention_impl=pallas"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "paged decode step (4 slots x 1 token, 128 pages of 16 tokens" in out.stdout
    assert "mosaic: paged_attention x2" in out.stdout  # one call per layer (unrolled: each layer its own pages)
    assert re.search(r"KV pages: [\d.]+ KiB per page per device; this program holds 128, \d+ fit in HBM", out.stdout)


def test_page_pool_refcounts_shares_prefix_pages_and_evicts_the_least_recently_released():
    from jaxlm.serving.pages import PagePool, prefix_hashes

    pool = PagePool(3)
    a = prefix_hashes([1, 2, 3, 4, 5, 6], 2, 3)
    assert a[:2] == prefix_hashes([1, 2, 3, 4, 9, 9], 2, 2) and a[0] != prefix_hashes([1, 2], 2, 1, b"long")[0]
    pages = [pool.allocate() for _ in range(3)]
    assert pool.allocate() is None and pool.in_use == 3
    for h, p in zip(a, pages):
        pool.publish(h, p)
    assert pool.match(a[:2]) == pages[:2] and pool.refs[pages[0]] == 2  # shared: held twice
    pool.release(pages)
    pool.release(pages[:2])
    assert pool.in_use == 0 and pool.cached == 3  # all idle in the cache, nothing held
    assert pool.allocate() == pages[2] and pool.cached == 2  # released first (LRU): evicted first
    assert pool.match(a) == pages[:2] and (pool.hits, pool.queries) == (4, 5)


def test_a_failing_step_ends_its_requests_with_error_and_the_engine_keeps_serving(lm, monkeypatch):
    engine = ServingEngine(lm, **ENGINE)
    run = engine._runner.run
    monkeypatch.setattr(engine._runner, "run", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    engine.start()
    failed = engine.submit([5, 6, 7], RequestParams(max_tokens=4))
    assert failed.result(timeout=30).finish_reason == "error" and isinstance(engine.last_error, RuntimeError)
    monkeypatch.setattr(engine._runner, "run", run)
    assert engine.submit([5, 6, 7], RequestParams(max_tokens=4)).result(timeout=60).token_ids == alone(lm, [5, 6, 7], 4)
    engine.shutdown()
    assert engine.stats().pages_in_use == 0
