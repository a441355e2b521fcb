"""A layerwise-scaled jaxlm model exported to Apple's OpenELM layout runs in jaxlm.torch (no
transformers) with the same logits and the same greedy text; the folder converts back bit-exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert_helpers import VOCAB, save_jaxlm_model, text_batch

torch = pytest.importorskip("torch")

from jaxlm.checkpoint import load_model  # noqa: E402
from jaxlm.convert import from_hf, to_hf  # noqa: E402

# 3 layers with different head counts and FFN widths; QK-norm; tied embeddings.
LAYERWISE = ["model.model_dim=64", "model.num_layers=3", "model.head_dim=16", "model.ffn_dim_divisor=16",
             f"model.vocab_size={VOCAB}", "model.attention_impl=xla", "model.norm_impl=xla"]
OPENELM_FIELDS = {"vocab_size", "max_context_length", "num_transformer_layers", "model_dim", "head_dim",
                  "qkv_multipliers", "num_query_heads", "num_kv_heads", "num_gqa_groups", "ffn_multipliers",
                  "ffn_with_glu", "ffn_dim_divisor", "activation_fn_name", "normalization_layer_name",
                  "normalize_qk_projections", "share_input_output_layers", "rope_freq_constant", "rope_max_length",
                  "initializer_range", "bos_token_id", "eos_token_id", "auto_map"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("openelm")
    run_cfg, model = save_jaxlm_model(root / "jx", "tiny_layerwise", LAYERWISE, seed=3)
    assert len(set(run_cfg.model.layer_specs)) == 3  # really layerwise
    to_hf(root / "jx", root / "hf")
    return root, run_cfg, model


def test_openelm_config_has_the_reference_fields(exported):
    root, run_cfg, _ = exported
    config = json.loads((root / "hf" / "config.json").read_text())
    assert config["model_type"] == "openelm" and OPENELM_FIELDS <= set(config)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_openelm.OpenELMForCausalLM"
    assert config["num_query_heads"] == [s.num_query_heads for s in run_cfg.model.layer_specs]
    assert len(config["ffn_multipliers"]) == 3
    assert (root / "hf" / "tokenizer.model").is_file()


def test_jaxlm_torch_matches_jax_logits_and_greedy_text(exported):
    from jaxlm.inference import LanguageModel
    from jaxlm.tokenizer import load_tokenizer
    from jaxlm.torch import load_openelm

    root, _, model = exported
    tm = load_openelm(root / "hf")
    ids = text_batch()
    with torch.no_grad():
        ref = tm(torch.tensor(ids, dtype=torch.long)).numpy()
    diff = np.abs(np.asarray(model(ids)) - ref).max()
    assert diff <= 1e-4, diff
    lm = LanguageModel(model, load_tokenizer("bundled:tokenizer"))
    prompt = [int(t) for t in ids[0, :12]]
    jax_new = lm.generate_ids([prompt], 32, stop_tokens=[], temperature=0.0).tokens[0]
    torch_new = tm.generate(torch.tensor([prompt]), 32)[0].tolist()
    assert len(jax_new) == 32 and jax_new == torch_new


def test_openelm_folder_converts_back_bit_exactly(exported, tmp_path):
    root, _, model = exported
    from_hf(root / "hf", tmp_path / "jx")
    run_cfg, back = load_model(tmp_path / "jx")
    assert run_cfg.model.qk_norm and run_cfg.model.tie_embeddings
    ids = text_batch()
    assert np.array_equal(np.asarray(back(ids)), np.asarray(model(ids)))
    to_hf(tmp_path / "jx", tmp_path / "hf2")
    from safetensors.numpy import load_file

    a, b = load_file(str(root / "hf" / "model.safetensors")), load_file(str(tmp_path / "hf2" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
