"""LoRA: exact zero-init, merge, training through jaxlm train, CLI merge/export, PEFT load in transformers."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.checkpoint import load_model, save_model
from jaxlm.cli.main import main
from jaxlm.config import from_dict
from jaxlm.config.run import RunConfig
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.lora import LoraConfig, apply_lora, merge_lora
from jaxlm.lora.adapters import LoraWeight, has_lora
from jaxlm.model import build_model
from jaxlm.quant import QuantConfig, quantize_model

TINY = dict(name="tiny_lora", vocab_size=256, model_dim=64, num_layers=2, head_dim=16, num_query_heads=4,
            num_kv_heads=2, ffn_dim=128, max_context=64, attention_impl="xla", norm_impl="xla")
LORA = LoraConfig(enabled=True, rank=4, alpha=8.0)


@nnx.jit
def forward(model, tokens):
    return model(tokens)


def tokens(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (2, 20)), jnp.int32)


def cfg(**kw):
    return from_dict(RunConfig, {"model": {**TINY, **kw}})


def randomize_adapters(model, seed=1, scale=0.05):
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(model, jax.tree.map(lambda x: scale * jax.random.normal(next(keys), x.shape, x.dtype), state))


@pytest.mark.parametrize("quant", [None, QuantConfig(bits=4, group_size=32)])
def test_zero_adapter_leaves_output_exactly_equal(quant):
    model = build_model(cfg(qk_norm=True).model)
    if quant:
        quantize_model(model, quant)
    ref = forward(model, tokens())
    apply_lora(model, LORA)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))) > 0
    np.testing.assert_array_equal(forward(model, tokens()), ref)


def test_merge_equals_base_plus_adapter():
    model = apply_lora(build_model(cfg().model), LORA)
    randomize_adapters(model)
    adapted = forward(model, tokens())
    base = forward(merge_lora(apply_lora(build_model(cfg().model), LORA)), tokens())  # zero adapters
    assert float(jnp.max(jnp.abs(adapted - base))) > 1e-2  # the adapters matter ...
    w = model.groups[0].attn.out
    a, b = np.asarray(w.lora_a[...], np.float64), np.asarray(w.lora_b[...], np.float64)
    expected = np.asarray(w.base[...], np.float64) + LORA.scale * np.einsum("lkgdr,lre->lkgde", a, b)
    merge_lora(model)
    assert type(model.groups[0].attn.out) is nnx.Param and not has_lora(model)
    np.testing.assert_allclose(model.groups[0].attn.out[...], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(forward(model, tokens()), adapted, rtol=1e-4, atol=1e-4)  # ... and merge keeps them


def test_lora_on_quantized_base_merges_to_float():
    model = quantize_model(build_model(cfg().model), QuantConfig(bits=4, group_size=32))
    apply_lora(model, LoraConfig(enabled=True, rank=2, targets=("qkv", "w_out")))
    assert type(model.groups[0].ffn.w_in).__name__ == "QuantizedWeight"  # not a target: untouched
    randomize_adapters(model)
    adapted = forward(model, tokens())
    merge_lora(model)
    assert type(model.groups[0].attn.qkv) is nnx.Param
    np.testing.assert_allclose(forward(model, tokens()), adapted, rtol=1e-4, atol=1e-4)


def test_bad_lora_config_and_double_apply():
    with pytest.raises(ConfigError, match="lora.rank"):
        LoraConfig(rank=0)
    with pytest.raises(ConfigError, match="unknown projection"):
        LoraConfig(targets=("q_proj",))
    model = apply_lora(build_model(cfg().model), LORA)
    with pytest.raises(JaxlmError, match="already applied"):
        apply_lora(model, LORA)
    with pytest.raises(JaxlmError, match="merge LoRA adapters first"):
        quantize_model(model, QuantConfig(bits=8))


def test_lora_training_through_jaxlm_train_then_merge_and_export(tmp_path):
    import dataclasses

    from jaxlm.training import train

    from train_helpers import tiny_run_config, token_batches

    run_cfg = dataclasses.replace(tiny_run_config(tmp_path / "run", steps=3, checkpoint={"async_save": False}),
                                  lora=LORA)
    result = train(run_cfg, batch_source=token_batches, quiet=True)
    _, model = load_model(result.run_dir)
    assert isinstance(model.groups[0].attn.qkv, LoraWeight)
    assert float(jnp.max(jnp.abs(model.groups[0].ffn.w_out.lora_b[...]))) > 0  # adapters trained
    fresh = build_model(run_cfg.model, seed=run_cfg.seed)
    np.testing.assert_allclose(model.groups[0].attn.qkv.base[...], fresh.groups[0].attn.qkv[...], atol=1e-6)
    np.testing.assert_allclose(model.embed[...], fresh.embed[...], atol=1e-6)  # base frozen
    adapted = forward(model, tokens())

    merged_dir = tmp_path / "merged"
    assert main(["lora", "merge", "--ckpt", str(result.run_dir), "--out", str(merged_dir)]) == 0
    merged_cfg, merged = load_model(merged_dir)
    assert not merged_cfg.lora.enabled and not has_lora(merged)
    np.testing.assert_allclose(forward(merged, tokens()), adapted, rtol=1e-4, atol=1e-4)

    peft_dir = tmp_path / "peft"
    assert main(["lora", "export", "--ckpt", str(result.run_dir), "--out", str(peft_dir)]) == 0
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                "v_proj"]
    assert main(["lora", "export", "--ckpt", str(merged_dir), "--out", str(tmp_path / "p2")]) == 2


@pytest.mark.skipif(importlib.util.find_spec("jaxlm.convert") is None, reason="jaxlm.convert (to-hf) has not landed")
def test_peft_export_loads_with_peft_on_the_converted_model(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from jaxlm.convert.peft import export_peft
    from jaxlm.convert.to_hf import to_hf

    run_cfg = cfg()
    base = build_model(run_cfg.model, seed=3)
    save_model(tmp_path / "base", run_cfg, base)
    to_hf(tmp_path / "base", tmp_path / "hf")
    model = apply_lora(base, LoraConfig(enabled=True, rank=4, alpha=8.0, targets=("qkv", "out", "w_in", "w_out")))
    randomize_adapters(model, seed=5, scale=0.1)
    export_peft(model, LoraConfig(enabled=True, rank=4, alpha=8.0), tmp_path / "adapter")
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert keys["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert keys["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (32, 4)

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    ids = np.asarray(tokens(7))
    with torch.no_grad():
        want = peft_model(torch.from_numpy(ids.copy()).long()).logits.numpy()
    got = np.asarray(forward(model, jnp.asarray(ids)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
