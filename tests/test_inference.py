"""Compiled prefill + decode: cached greedy decoding equals full recomputation, batches of
different lengths, per-row stop tokens, streaming, the int8 cache, and bad requests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from inference_util import random_model

from jaxlm.errors import JaxlmError
from jaxlm.inference import Engine, SamplingParams
from jaxlm.model import ModelConfig, kv_cache

# Layerwise-scaled: every layer has its own query heads, kv heads and FFN width.
CFG = ModelConfig(name="tiny_lw", vocab_size=97, model_dim=64, num_layers=3, head_dim=16,
                  num_query_heads=(2, 4, 6), num_kv_heads=(1, 2, 3), ffn_dim=(64, 96, 128), qk_norm=True,
                  max_context=96, eos_token_id=96)
PROMPTS = [[5, 17, 33], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                        26, 27, 28, 29, 30, 31, 32, 33, 34, 35], [9]]  # lengths 3, 35 (two buckets wide), 1


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=3)


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model)


def greedy_by_recompute(model, prompt, n):
    """Reference: the full forward pass over the whole sequence for every new token, one row at a time."""
    forward = jax.jit(lambda t, i: model(t)[0, i])  # padding after position i cannot change it (causal)
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, CFG.max_context), np.int32)
        padded[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(forward(jnp.asarray(padded), len(seq) - 1))))
    return seq[len(prompt):]


def test_cached_greedy_equals_full_recompute_for_rows_of_different_lengths(model, engine):
    assert len({s.num_kv_heads for s in CFG.layer_specs}) == 3  # really layerwise
    out = engine.generate(PROMPTS, max_new_tokens=10)
    assert out.prompt_lengths == [3, 35, 1]
    for prompt, got in zip(PROMPTS, out.tokens):
        assert got == greedy_by_recompute(model, prompt, 10)
    assert out.finish_reasons == ["length"] * 3


def test_stop_tokens_end_each_row_separately(engine):
    free = engine.generate(PROMPTS, max_new_tokens=10).tokens
    # Stop row 0 at the first occurrence of its 4th token; row 1 never stops; row 2 stops at its first token.
    stops = [[free[0][3]], [-7], [free[2][0]]]
    out = engine.generate(PROMPTS, max_new_tokens=10, stop_tokens=stops)
    cut = free[0].index(free[0][3])
    assert out.tokens[0] == free[0][:cut] and out.finish_reasons[0] == "stop"
    assert out.tokens[1] == free[1] and out.finish_reasons[1] == "length"
    assert out.tokens[2] == [] and out.finish_reasons[2] == "stop"


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ(engine):
    sp = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = engine.generate(PROMPTS, 12, SamplingParams(**sp, seed=11)).tokens
    b = engine.generate(PROMPTS, 12, SamplingParams(**sp, seed=11)).tokens
    c = engine.generate(PROMPTS, 12, SamplingParams(**sp, seed=12)).tokens
    assert a == b
    assert a != c


def test_streaming_callback_sees_every_token_in_order_and_can_stop(engine):
    expected = engine.generate(PROMPTS, max_new_tokens=10).tokens
    seen = []
    engine.generate(PROMPTS, max_new_tokens=10, on_token=lambda step, tok, done: seen.append((step, tok.tolist())))
    assert [s for s, _ in seen] == list(range(10))
    for row in range(3):
        assert [tok[row] for _, tok in seen] == expected[row]
    out = engine.generate(PROMPTS, max_new_tokens=10, on_token=lambda step, tok, done: step >= 3)
    assert [len(t) for t in out.tokens] == [4, 4, 4]
    assert [t[:4] for t in expected] == out.tokens


def test_int8_and_bf16_caches_decode_close_to_the_float_model(model):
    d = CFG.head_dim  # int8: d bytes + a float32 scale per token and kv head; bf16: 2 d bytes
    int8, bf16 = kv_cache.cache_bytes(CFG, 8, 96, jnp.int8), kv_cache.cache_bytes(CFG, 8, 96, jnp.bfloat16)
    assert int8 * 2 * d == bf16 * (d + 4)
    tokens = jax.random.randint(jax.random.key(0), (2, 10), 0, 97)
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=2)
    def run(state, tokens, dtype):  # prefill 8 tokens, then decode 2 one at a time
        m = nnx.merge(graphdef, state)
        cache = kv_cache.init_cache(CFG, 2, 16, dtype)
        _, cache = m.cached(tokens[:, :8], positions=jnp.broadcast_to(jnp.arange(8), (2, 8)), cache=cache)
        steps = []
        for t in range(8, 10):
            step, cache = m.cached(tokens[:, t:t + 1], positions=jnp.full((2, 1), t), cache=cache)
            steps.append(step[:, 0])
        return jnp.stack(steps, 1), m(tokens)[:, 8:]

    for dtype in ("bfloat16", "int8"):
        steps, full = run(state, tokens, dtype)
        err = jnp.max(jnp.abs(steps - full)) / jnp.max(jnp.abs(full))
        assert err < 0.05, (dtype, float(err))
        assert err > 0  # the low-precision cache is really in use


def test_int8_quantization_error_is_within_half_a_step():
    x = jax.random.normal(jax.random.key(1), (4, 5, 3, 16)) * jnp.arange(1, 4)[:, None]
    q, scale = jax.jit(kv_cache.quantize)(x)
    assert q.dtype == jnp.int8 and scale.shape == (4, 5, 3)
    err = np.abs(np.asarray(q, np.float32) * np.asarray(scale)[..., None] - np.asarray(x))
    assert np.all(err <= np.asarray(scale)[..., None] / 2 + 1e-6)
    np.testing.assert_allclose(kv_cache.dequantize(q, scale, jnp.float32), x, atol=float(scale.max()) / 2 + 1e-6)


def test_int8_engine_runs_and_mostly_agrees(model, engine):
    ref = engine.generate(PROMPTS, max_new_tokens=6).tokens
    got = Engine(model, cache_dtype="int8").generate(PROMPTS, max_new_tokens=6).tokens
    assert [len(t) for t in got] == [6, 6, 6]
    assert sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g)) >= 12  # of 18 tokens


@pytest.mark.parametrize("prompts, n, match", [
    ([[]], 4, "prompt 0 is empty"),
    ([[1, 2], []], 4, "prompt 1 is empty"),
    ([list(range(90))], 10, "over the model's context of 96"),
    ([[1, 200]], 4, "outside the model's vocabulary"),
    ([], 4, "no prompts"),
    ([[1]], 0, "max_new_tokens must be >= 1"),
])
def test_bad_requests_raise_clear_errors(engine, prompts, n, match):
    with pytest.raises(JaxlmError, match=match):
        engine.generate(prompts, n)


def test_unknown_cache_dtype_is_rejected(model):
    with pytest.raises(JaxlmError, match="unknown cache dtype"):
        Engine(model, cache_dtype="int4")


def test_a_bfloat16_model_decodes_a_batch():
    """bf16 weights and compute, several rows: XLA:CPU has no batched bf16 -> f32 dot, so the cached
    attention must not ask it for one (it did: "Unsupported element type for DotThunk")."""
    import dataclasses

    from jaxlm.config import load_run_config
    from jaxlm.model import build_model

    cfg = dataclasses.replace(load_run_config("tiny_uniform").model, param_dtype="bfloat16", compute_dtype="bfloat16")
    out = Engine(build_model(cfg)).generate([[5, 6, 7], [8, 9]], max_new_tokens=4)
    assert [len(t) for t in out.tokens] == [4, 4] or "stop" in out.finish_reasons
