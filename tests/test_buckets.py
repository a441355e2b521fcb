"""Layer buckets (jaxlm.model.buckets): OpenELM's differently sized layers padded into a few scans.

The padded model must equal the unpadded one in logits and gradients, keep its padding at exactly
zero through AdamW, and save, load, export and checkpoint in the unpadded layout bit for bit.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlm.checkpoint import load_model, save_model
from jaxlm.checkpoint.metadata import saved_param_shapes
from jaxlm.config import load_run_config
from jaxlm.config.run import RunConfig
from jaxlm.errors import JaxlmError
from jaxlm.model import ModelConfig, bucketed_tree, buckets, build_model, kv_cache, stored_tree, to_bucketed, to_stored
from jaxlm.training.trainer import train

from train_helpers import tiny_run_config, token_batches

# OpenELM layerwise scaling, 6 layers: (q, kv, ffn) = (4, 2, 32), (6, 3, 80), (6, 3, 128), (6, 3, 160),
# (8, 4, 208), (8, 4, 256). Buckets pad kv heads (with their 2 query heads each) and FFN width.
LAYERS = dict(num_layers=6, qkv_multipliers=(0.5, 1.0), ffn_multipliers=(0.5, 4.0), num_gqa_groups=2,
              ffn_dim_divisor=16)


def cfg_(**kw) -> ModelConfig:
    base = dict(vocab_size=97, model_dim=64, head_dim=8, qk_norm=True, max_context=64, scan_pad_budget=0.3,
                **LAYERS)
    base.update(kw)
    return ModelConfig(**base)


def flat(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same(a: dict, b: dict) -> None:
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def params(model) -> dict:
    return nnx.state(model, nnx.Param).to_pure_dict()


def test_plan_is_the_fewest_buckets_within_the_budget():
    cfg = cfg_()
    runs = cfg.stored_groups
    assert len(runs) == 6
    for budget in (0.0, 0.02, 0.1, 0.3, 0.5, 0.9):
        got = buckets.plan(runs, 64, 8, 64, budget) if budget else tuple(buckets.Bucket(s, ((s, c),)) for s, c in runs)
        # brute force over every split of the runs into consecutive pieces
        best = None
        for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, len(runs)), k)
                                                  for k in range(len(runs))):
            bounds = list(zip((0,) + cuts, cuts + (len(runs),)))
            pieces = [runs[i:j] for i, j in bounds]
            if any(len({s.num_query_heads // s.num_kv_heads for s, _ in p}) > 1 for p in pieces):
                continue
            cand = tuple(buckets.Bucket(buckets.padded_spec([s for s, _ in p]), p) for p in pieces)
            if buckets.overhead(cand, 64, 8, 64) <= budget + 1e-12 and (best is None or len(cand) < len(best)):
                best = cand
        assert len(got) == len(best), budget
        assert buckets.overhead(got, 64, 8, 64) <= budget + 1e-12
        assert [m for b in got for m in b.members] == list(runs)  # consecutive, in order, all of them
    assert len(cfg.buckets) < len(runs) and cfg.bucketed
    assert not cfg.stored().bucketed and cfg.stored().scan_groups == runs
    # a layer with G = 4 never shares a bucket with G = 2 ones (a padded query head would see real keys)
    mixed = cfg_(num_query_heads=(2, 2, 4, 4, 4, 8), num_kv_heads=(1, 1, 2, 2, 2, 2), ffn_dim=64, scan_pad_budget=0.9)
    assert [b.count for b in mixed.buckets] == [5, 1]


@pytest.mark.parametrize("name,most", [("openelm_270m", 8), ("openelm_1_1b", 11), ("openelm_3b", 12)])
def test_shipped_openelm_configs_bucket_within_three_percent(name, most):
    cfg = load_run_config(name).model
    assert cfg.scan_pad_budget == 0.03
    head = 6 * cfg.vocab_size * cfg.model_dim
    assert len(cfg.scan_groups) <= most < len(cfg.stored_groups)
    assert 0 < buckets.overhead(cfg.buckets, cfg.model_dim, cfg.head_dim, cfg.max_context, head) <= 0.03


def test_bucketed_model_equals_the_unpadded_one_and_its_padding_stays_zero_under_adamw():
    cfg = cfg_()
    padded, plain = build_model(cfg, seed=3), build_model(cfg.stored(), seed=3)
    assert len(padded.groups) == len(cfg.buckets) < len(plain.groups)
    assert_same(stored_tree(cfg, params(padded)), params(plain))  # the same init
    tokens = jax.random.randint(jax.random.key(0), (2, 24), 0, 97)
    np.testing.assert_allclose(padded(tokens), plain(tokens), atol=2e-5)

    def grad_fn(model):
        graphdef, state = nnx.split(model)

        def loss(p):
            st = jax.tree.map(lambda x: x, state)
            st.replace_by_pure_dict(p)
            logits = nnx.merge(graphdef, st)(tokens)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]))

        return jax.jit(jax.grad(loss))

    tx = optax.adamw(1e-2, weight_decay=0.1)
    update = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    grad_p, grad_q = grad_fn(padded), grad_fn(plain)
    pp, pq = params(padded), params(plain)
    sp, sq = tx.init(pp), tx.init(pq)
    for _ in range(3):
        gp, gq = grad_p(pp), grad_q(pq)
        # gradients agree, and every padded entry's gradient is exactly zero
        assert_same(bucketed_tree(cfg, stored_tree(cfg, gp)), gp)
        for k, v in flat(stored_tree(cfg, gp)).items():
            np.testing.assert_allclose(v, flat(gq)[k], atol=2e-5, err_msg=k)  # the weights drift apart by ~1e-5
        pp, sp = update(gp, sp, pp)
        pq, sq = update(gq, sq, pq)
    # after AdamW with weight decay the padding is still exactly zero, and the weights still agree
    assert_same(bucketed_tree(cfg, stored_tree(cfg, pp)), pp)
    for k, v in flat(stored_tree(cfg, pp)).items():
        # Adam divides by sqrt(v): a near-zero gradient turns float noise into up to a step (lr 1e-2)
        np.testing.assert_allclose(v, flat(pq)[k], atol=1e-3, err_msg=k)
    # optimizer moments convert too (the trainer checkpoints them unpadded)
    assert jax.tree.structure(stored_tree(cfg, sp)) == jax.tree.structure(sq)


def test_decode_with_a_bucketed_cache_matches_the_full_forward():
    cfg = cfg_()
    model = build_model(cfg, seed=1)
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 97)
    full = model(tokens)
    cache = kv_cache.init_cache(cfg, 2, 16, jnp.float32)
    assert [c["k"].shape[2] for c in cache] == [b.spec.num_kv_heads for b in cfg.buckets]  # padded kv heads
    logits, cache = model.cached(tokens[:, :8], positions=jnp.broadcast_to(jnp.arange(8), (2, 8)), cache=cache)
    np.testing.assert_allclose(logits, full[:, :8], atol=1e-5)
    for t in range(8, 12):
        step, cache = model.cached(tokens[:, t:t + 1], positions=jnp.full((2, 1), t), cache=cache)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-4)


def test_model_dirs_hold_the_unpadded_layers_bit_exactly(tmp_path):
    from jaxlm.convert.to_hf import to_hf

    cfg = cfg_()
    run = RunConfig(model=cfg)
    padded = build_model(cfg, seed=5)
    save_model(tmp_path / "padded", run, padded)
    save_model(tmp_path / "plain", RunConfig(model=cfg.stored()), to_stored(padded))
    shapes = saved_param_shapes(tmp_path / "padded" / "params" / "state")
    assert shapes == saved_param_shapes(tmp_path / "plain" / "params" / "state")
    assert shapes["layers/0/ffn/w_out"] == (32, 64) and shapes["layers/0/attn/qkv"] == (64, 2, 4, 8)
    _, loaded = load_model(tmp_path / "padded")
    assert not loaded.cfg.bucketed  # loaded in the stored layout, the one weight transforms work on
    assert_same(params(loaded), stored_tree(cfg, params(padded)))
    assert_same(params(to_bucketed(loaded, cfg)), params(padded))
    # a Hugging Face export of either is the same bytes
    to_hf(tmp_path / "padded", tmp_path / "hf_a")
    to_hf(tmp_path / "plain", tmp_path / "hf_b")
    a, b = ((tmp_path / "hf_a" / "model.safetensors").read_bytes(),
            (tmp_path / "hf_b" / "model.safetensors").read_bytes())
    assert a == b


def test_weight_transforms_refuse_a_padded_model_and_runs_with_them_store_unpadded():
    from jaxlm.lora import apply_lora
    from jaxlm.lora.config import LoraConfig
    from jaxlm.quant import QuantConfig, quantize_model
    from jaxlm.variants import layout_config, model_for

    model = build_model(cfg_(), seed=0)
    with pytest.raises(JaxlmError, match="stored layout"):
        quantize_model(model, QuantConfig(bits=8))
    with pytest.raises(JaxlmError, match="stored layout"):
        apply_lora(model, LoraConfig(enabled=True, rank=2))
    # The run's model is built unpadded (jaxlm.variants decides); the config keeps what the user wrote.
    run_cfg = RunConfig(model=cfg_(), lora=LoraConfig(enabled=True, rank=2))
    assert run_cfg.model.bucketed and not layout_config(run_cfg.model, run_cfg.quant, run_cfg.lora).bucketed
    assert not model_for(run_cfg.model, run_cfg.quant, run_cfg.lora, abstract=True).cfg.bucketed


def test_training_checkpoints_are_unpadded_and_resume_exactly(tmp_path):
    layers = {k: list(v) if isinstance(v, tuple) else v for k, v in LAYERS.items()}
    model = dict(**layers, head_dim=8, model_dim=64, qk_norm=True, scan_pad_budget=0.3)
    plain_model = dict(model, scan_pad_budget=0.0)
    whole = train(tiny_run_config(tmp_path / "whole", steps=4, mesh=(1, 1, 1), model=model), batch_source=token_batches,
                  quiet=True, devices=jax.devices()[:1])
    ref = train(tiny_run_config(tmp_path / "plain", steps=4, mesh=(1, 1, 1), model=plain_model),
                batch_source=token_batches, quiet=True, devices=jax.devices()[:1])
    for s in range(1, 5):
        assert abs(whole.losses[s] - ref.losses[s]) < 1e-4, s
    # the checkpoint of the padded run has the unpadded run's shapes
    assert saved_param_shapes(tmp_path / "whole" / "checkpoints" / "4" / "params") == \
        saved_param_shapes(tmp_path / "plain" / "checkpoints" / "4" / "params")
    # stop at step 2, resume from its (unpadded) checkpoint: bit-exact with the uninterrupted run
    train(tiny_run_config(tmp_path / "cut", steps=4, mesh=(1, 1, 1), model=model, stop_after=2),
          batch_source=token_batches, quiet=True, devices=jax.devices()[:1])
    resumed = train(tiny_run_config(tmp_path / "cut", steps=4, mesh=(1, 1, 1), model=model),
                    batch_source=token_batches, quiet=True, devices=jax.devices()[:1])
    assert resumed.losses[4] == whole.losses[4]
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
