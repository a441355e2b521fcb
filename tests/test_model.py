"""Model behaviour: causality, packing, GQA, RoPE scaling formulas, tied embeddings, KV cache."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import load_run_config
from jaxlm.model import ModelConfig, RopeScaling, build_model, kv_cache
from jaxlm.model.rope import inverse_frequencies, rope_tables
from kernels_pallas.attention import attention_reference


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, model_dim=64, num_layers=3, head_dim=16, qkv_multipliers=(0.5, 1.0),
                ffn_multipliers=(0.5, 4.0), num_gqa_groups=2, ffn_dim_divisor=16, qk_norm=True)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def layerwise_model():
    cfg = tiny()
    assert len({s for s in cfg.layer_specs}) > 1  # really layerwise-scaled
    return build_model(cfg, seed=1)


def test_causality(layerwise_model):
    tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 97)
    base = layerwise_model(tokens)
    t = 13
    changed = layerwise_model(tokens.at[:, t].set((tokens[:, t] + 1) % 97))
    np.testing.assert_array_equal(np.asarray(base[:, :t]), np.asarray(changed[:, :t]))
    assert not np.allclose(base[:, t:], changed[:, t:])


def test_packed_segments_equal_separate_documents(layerwise_model):
    doc_a = jax.random.randint(jax.random.key(1), (1, 9), 0, 97)
    doc_b = jax.random.randint(jax.random.key(2), (1, 14), 0, 97)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segments = jnp.array([[1] * 9 + [2] * 14])
    out = layerwise_model(packed, segment_ids=segments)  # positions restart per segment by default
    np.testing.assert_allclose(out[:, :9], layerwise_model(doc_a), atol=1e-5)
    np.testing.assert_allclose(out[:, 9:], layerwise_model(doc_b), atol=1e-5)


def test_gqa_with_repeated_kv_equals_mha():
    gqa_cfg = tiny(num_query_heads=4, num_kv_heads=2, ffn_dim=32, qkv_multipliers=None, ffn_multipliers=None)
    mha_cfg = tiny(num_query_heads=4, num_kv_heads=4, ffn_dim=32, qkv_multipliers=None, ffn_multipliers=None)
    gqa, mha = build_model(gqa_cfg, seed=3), build_model(mha_cfg, seed=4)
    g = 2
    for gb, mb in zip(gqa.groups, mha.groups):
        qkv, out = gb.attn.qkv[...], gb.attn.out[...]  # (L, D, 2, 2 + 2, hd), (L, 2, 2, hd, D)
        q = qkv[:, :, :, :g].reshape(*qkv.shape[:2], 4, 1, qkv.shape[-1])  # head h = kv * G + j
        k = jnp.repeat(qkv[:, :, :, g:g + 1], g, axis=2)  # MHA head h reads GQA kv head h // G
        v = jnp.repeat(qkv[:, :, :, g + 1:g + 2], g, axis=2)
        mb.attn.qkv[...] = jnp.concatenate([q, k, v], axis=3)
        mb.attn.out[...] = out.reshape(out.shape[0], 4, 1, *out.shape[3:])
        for name in ("attn_norm", "ffn_norm"):
            getattr(mb, name)[...] = getattr(gb, name)[...]
        mb.attn.q_norm[...], mb.attn.k_norm[...] = gb.attn.q_norm[...], gb.attn.k_norm[...]
        mb.ffn.w_in[...], mb.ffn.w_out[...] = gb.ffn.w_in[...], gb.ffn.w_out[...]
    mha.embed[...] = gqa.embed[...]
    tokens = jax.random.randint(jax.random.key(5), (2, 11), 0, 97)
    np.testing.assert_allclose(gqa(tokens), mha(tokens), atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_attention_reference_gqa_equals_repeated_mha(groups):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 10, 8, 16))
    k = jax.random.normal(kk, (2, 10, 8 // groups, 16))
    v = jax.random.normal(kv, (2, 10, 8 // groups, 16))
    gqa = attention_reference(q, k, v)
    mha = attention_reference(q, jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2))
    np.testing.assert_allclose(gqa, mha, atol=1e-6)
    # and against a plain softmax written out
    kr, vr = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, kr) / 4.0 + jnp.triu(jnp.full((10, 10), -jnp.inf), 1)
    np.testing.assert_allclose(gqa, jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), vr), atol=1e-5)


def test_llama3_frequencies_match_reference_formula():
    s = RopeScaling(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
    got = inverse_frequencies(128, 500000.0, s)
    for i, f in enumerate(1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)):
        w = 2 * math.pi / f
        if w < 8192 / 4:
            want = f
        elif w > 8192 / 1:
            want = f / 8
        else:
            sm = (8192 / w - 1) / (4 - 1)
            want = (1 - sm) * f / 8 + sm * f
        assert got[i] == pytest.approx(want, rel=1e-12), i
    assert got[0] == pytest.approx(1.0) and got[-1] < 1.0 / 500000.0 ** (126 / 128) / 7.9  # both regimes hit


def test_longrope_tables_match_reference_formula():
    cfg = load_run_config("phi3_mini_128k").model
    rs = cfg.rope_scaling
    mscale = math.sqrt(1 + math.log(131072 / 4096) / math.log(4096))
    assert mscale == pytest.approx(1.1902, abs=1e-4)
    for pos, factors in [(100, rs.short_factor), (5000, rs.long_factor)]:
        positions = jnp.array([[0, pos]])  # the max position decides short vs long
        cos, sin = rope_tables(positions, 96, cfg.rope_theta, rs, cfg.max_context)
        inv = np.array([1.0 / (factors[i] * 10000.0 ** (2 * i / 96)) for i in range(48)])
        np.testing.assert_allclose(cos[0, 1, :48], np.cos(pos * inv) * mscale, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(sin[0, 1, 48:], np.sin(pos * inv) * mscale, rtol=2e-4, atol=2e-4)


def test_longrope_picks_factors_per_row_from_its_length():
    rs = load_run_config("phi3_mini_128k").model.rope_scaling
    positions = jnp.broadcast_to(jnp.arange(4100), (3, 4100))
    lengths = jnp.array([4096, 4097, 10])  # 4096 fits the original context; 4097 does not
    cos = rope_tables(positions, 96, 10000.0, rs, 131072, seq_lengths=lengths)[0]
    default = rope_tables(positions[:1, :4096], 96, 10000.0, rs, 131072)[0]  # largest position + 1 = 4096
    for row, factors in [(0, rs.short_factor), (1, rs.long_factor), (2, rs.short_factor)]:
        inv = np.array([1.0 / (factors[i] * 10000.0 ** (2 * i / 96)) for i in range(48)])
        np.testing.assert_allclose(cos[row, 50, :48], np.cos(50 * inv) * 1.1902, rtol=1e-3, atol=1e-4)
    assert np.array_equal(default[0], cos[0, :4096])


def test_tied_embeddings_share_one_array():
    model = build_model(tiny(num_layers=2), seed=0)
    assert model.lm_head is None
    params = nnx.state(model, nnx.Param)
    n_embed_like = [x for x in jax.tree.leaves(params) if x.shape == (97, 64)]
    assert len(n_embed_like) == 1
    # the gradient of the single array collects both the lookup and the output-head uses
    graphdef, state = nnx.split(model)
    tokens = jnp.array([[1, 2, 3, 4]])

    def loss(embed, head_only):
        st = jax.tree.map(lambda x: x, state)
        st["embed"].set_value(embed)
        logits = nnx.merge(graphdef, st)(tokens)
        return logits[0, -1, 5]

    grad = jax.grad(loss)(state["embed"].get_value(), False)
    assert jnp.abs(grad[5]).sum() > 0  # output-head use (row 5 = logit 5)
    assert jnp.abs(grad[1]).sum() > 0  # lookup use (token 1 is an input, not a target)


def test_untied_has_separate_head():
    model = build_model(tiny(num_layers=1, tie_embeddings=False))
    assert model.lm_head is not None and model.lm_head.shape == (64, 97)


def test_kv_cache_decode_matches_full_forward(layerwise_model):
    cfg = layerwise_model.cfg
    tokens = jax.random.randint(jax.random.key(7), (2, 12), 0, 97)
    full = layerwise_model(tokens)
    cache = kv_cache.init_cache(cfg, 2, 16, jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    logits, cache = layerwise_model.cached(tokens[:, :8], positions=pos, cache=cache)
    np.testing.assert_allclose(logits, full[:, :8], atol=1e-5)
    for t in range(8, 12):
        step, cache = layerwise_model.cached(tokens[:, t:t + 1], positions=jnp.full((2, 1), t), cache=cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-4)


def test_scan_grouping_does_not_change_outputs():
    cfg = tiny(num_query_heads=4, num_kv_heads=2, ffn_dim=32, qkv_multipliers=None, ffn_multipliers=None,
               num_layers=3)
    scanned = build_model(cfg, seed=0)
    assert len(scanned.groups) == 1 and scanned.groups[0].ffn.w_out.shape[0] == 3
    unscanned = build_model(dataclasses.replace(cfg, scan_layers=False), seed=0)
    assert len(unscanned.groups) == 3
    for i, block in enumerate(unscanned.groups):
        src = nnx.state(scanned.groups[0], nnx.Param)
        nnx.update(block, jax.tree.map(lambda x: x[i:i + 1], src))
    unscanned.embed[...] = scanned.embed[...]
    tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    np.testing.assert_allclose(scanned(tokens), unscanned(tokens), atol=1e-5)
