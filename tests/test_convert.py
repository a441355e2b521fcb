"""Conversion to / from Hugging Face, proven by logits against transformers itself (float32, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from convert_helpers import VOCAB, text_batch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.checkpoint import load_model  # noqa: E402
from jaxlm.cli.main import main  # noqa: E402
from jaxlm.convert import from_hf, to_hf  # noqa: E402
from jaxlm.errors import JaxlmError  # noqa: E402

TOL = 1e-4  # max abs logit difference, float32


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def safetensors_of(folder) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_bit_identical(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


@pytest.fixture(scope="module")
def llama_hf(tmp_path_factory):
    """A tiny Llama 3.1-style model (GQA 4/2, llama3 RoPE scaling that matters at these positions)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("llama") / "hf"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def phi3_hf(tmp_path_factory):
    """A tiny Phi-3 128k-style model: LongRoPE with a 16-token original context, so 48 tokens use long factors."""
    torch.manual_seed(1)
    cfg = transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=16,
        rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                      "long_factor": [2.0 + 0.5 * i for i in range(8)]},
        pad_token_id=None, bos_token_id=1, eos_token_id=2)
    model = transformers.Phi3ForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("phi3") / "hf"
    model.save_pretrained(path)
    return path, model


def test_llama_import_matches_transformers_and_exports_bit_identical(llama_hf, tmp_path):
    hf_dir, hf_model = llama_hf
    from_hf(hf_dir, tmp_path / "jx")
    run_cfg, model = load_model(tmp_path / "jx")
    assert run_cfg.model.rope_scaling.type == "llama3" and run_cfg.model.num_kv_heads == 2
    ids = text_batch()
    diff = np.abs(np.asarray(model(ids)) - hf_logits(hf_model, ids)).max()
    assert diff <= TOL, diff
    to_hf(tmp_path / "jx", tmp_path / "back")
    assert_bit_identical(safetensors_of(hf_dir), safetensors_of(tmp_path / "back"))
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_scaling"]["rope_type"] == "llama3"
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()  # no remote code
    assert np.abs(hf_logits(reloaded, ids) - hf_logits(hf_model, ids)).max() == 0.0


def test_phi3_longrope_import_and_sharded_export(phi3_hf, tmp_path):
    hf_dir, hf_model = phi3_hf
    from_hf(hf_dir, tmp_path / "jx")
    run_cfg, model = load_model(tmp_path / "jx")
    assert run_cfg.model.rope_scaling.type == "longrope" and run_cfg.model.name == "phi3_hf"
    ids = text_batch(length=48)  # 48 > 16: the long factors and the attention factor are in play
    diff = np.abs(np.asarray(model(ids)) - hf_logits(hf_model, ids)).max()
    assert diff <= TOL, diff
    to_hf(tmp_path / "jx", tmp_path / "back", max_shard_size="200KB")
    index = json.loads((tmp_path / "back" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / "back" / s).is_file() for s in shards)
    assert "model.layers.1.self_attn.qkv_proj.weight" in index["weight_map"]
    assert_bit_identical(safetensors_of(hf_dir), safetensors_of(tmp_path / "back"))
    reloaded = transformers.Phi3ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert np.abs(hf_logits(reloaded, ids) - hf_logits(hf_model, ids)).max() == 0.0


def test_mistral_sliding_window_imports_exports_and_round_trips_through_phi3(tmp_path):
    """A tiny Mistral with a 16-token window: from-hf keeps the window (logits at 3 x the window equal
    transformers'), to-hf writes it back (bit-identical weights); the same model exported as Phi-3
    and imported again keeps it too; the Llama layout, which has no window, refuses it."""
    torch.manual_seed(5)
    cfg = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, sliding_window=16, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    hf_model = transformers.MistralForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper attention: the window changes the logits by far more than TOL
        for layer in hf_model.model.layers:
            layer.self_attn.q_proj.weight *= 4.0
            layer.self_attn.k_proj.weight *= 4.0
    hf_model.save_pretrained(tmp_path / "hf")
    from_hf(tmp_path / "hf", tmp_path / "jx")
    run_cfg, model = load_model(tmp_path / "jx")
    assert run_cfg.model.sliding_window == 16
    ids = text_batch(length=48)
    diff = np.abs(np.asarray(model(ids)) - hf_logits(hf_model, ids)).max()
    assert diff <= TOL, diff
    to_hf(tmp_path / "jx", tmp_path / "back")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["sliding_window"] == 16
    assert_bit_identical(safetensors_of(tmp_path / "hf"), safetensors_of(tmp_path / "back"))
    to_hf(tmp_path / "jx", tmp_path / "phi3", fmt="phi3")
    assert json.loads((tmp_path / "phi3" / "config.json").read_text())["sliding_window"] == 16
    from_hf(tmp_path / "phi3", tmp_path / "jx2")
    assert load_model(tmp_path / "jx2")[0].model.sliding_window == 16
    with pytest.raises(JaxlmError, match="Llama layout has no sliding window.*--format mistral"):
        to_hf(tmp_path / "jx", tmp_path / "llama", fmt="llama")


def test_bfloat16_round_trip_is_bit_identical(llama_hf, tmp_path):
    _, hf_model = llama_hf
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf_model.to(torch.float32)
    from_hf(tmp_path / "bf16", tmp_path / "jx")
    run_cfg, _ = load_model(tmp_path / "jx")
    assert run_cfg.model.param_dtype == "bfloat16"
    to_hf(tmp_path / "jx", tmp_path / "back")
    assert_bit_identical(safetensors_of(tmp_path / "bf16"), safetensors_of(tmp_path / "back"))


def _copy_hf(src, dst, drop: str | None = None, add: dict | None = None, reshape: str | None = None):
    from safetensors.numpy import save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = safetensors_of(src)
    if drop:
        tensors.pop(drop)
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    tensors.update(add or {})
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def assert_nothing_written(out) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_bad_inputs_give_clear_errors_and_write_nothing(llama_hf, tmp_path):
    hf_dir, _ = llama_hf
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    with pytest.raises(JaxlmError, match="no config.json"):
        from_hf(tmp_path / "empty", out)
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(JaxlmError, match="unsupported model_type 'gpt2'.*llama, mistral, phi3, openelm"):
        from_hf(tmp_path / "gpt2", out)
    _copy_hf(hf_dir, tmp_path / "missing", drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(JaxlmError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        from_hf(tmp_path / "missing", out)
    _copy_hf(hf_dir, tmp_path / "extra", add={"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(JaxlmError, match=r"unexpected.*model\.layers\.0\.self_attn\.q_proj\.bias"):
        from_hf(tmp_path / "extra", out)
    _copy_hf(hf_dir, tmp_path / "shape", reshape="model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(JaxlmError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\[31, 64\].*\[32, 64\]"):
        from_hf(tmp_path / "shape", out)
    assert_nothing_written(out)


def test_pickle_weights_need_the_flag(llama_hf, tmp_path):
    hf_dir, hf_model = llama_hf
    pkl = tmp_path / "pkl"
    pkl.mkdir()
    (pkl / "config.json").write_text((hf_dir / "config.json").read_text())
    torch.save(hf_model.state_dict(), pkl / "pytorch_model.bin")
    with pytest.raises(JaxlmError, match="--allow-pickle"):
        from_hf(pkl, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
    from_hf(pkl, tmp_path / "out", allow_pickle=True)  # torch.load(weights_only=True)
    _, model = load_model(tmp_path / "out")
    ids = text_batch()
    assert np.abs(np.asarray(model(ids)) - hf_logits(hf_model, ids)).max() <= TOL


def test_cli_refuses_non_empty_output_without_overwrite(llama_hf, tmp_path, capsys):
    hf_dir, _ = llama_hf
    out = tmp_path / "jx"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["convert", "from-hf", "--hf", str(hf_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "user data"
    assert main(["convert", "from-hf", "--hf", str(hf_dir), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.yaml").is_file()
    assert main(["convert", "to-hf", "--ckpt", str(out), "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert all(v.dtype.name == "bfloat16" for v in safetensors_of(tmp_path / "hf").values())
    assert main(["convert", "to-hf", "--ckpt", str(out), "--out", str(tmp_path / "hf")]) == 2


def test_failure_mid_export_leaves_nothing(llama_hf, tmp_path, monkeypatch):
    from jaxlm.checkpoint import params_io

    from_hf(llama_hf[0], tmp_path / "jx")
    calls = []

    def failing(real):
        def read(self, *args):
            calls.append(args)
            if len(calls) == 4:
                raise OSError("disk went away")
            return real(self, *args)
        return read

    for name in ("read", "read_layer"):
        monkeypatch.setattr(params_io.ParamReader, name, failing(getattr(params_io.ParamReader, name)))
    with pytest.raises(OSError, match="disk went away"):
        to_hf(tmp_path / "jx", tmp_path / "hf")
    assert_nothing_written(tmp_path / "hf")


@pytest.mark.parametrize("name,fmt", [("llama3_8b", "llama"), ("llama3_1_8b", "llama"), ("phi3_mini_4k", "phi3"),
                                      ("phi3_mini_128k", "phi3"), ("openelm_270m", "openelm"),
                                      ("openelm_1_1b", "openelm"), ("openelm_3b", "openelm")])
def test_shipped_configs_map_to_hf_and_back(name, fmt):
    """Real sizes: config.json written for each shipped config reads back as the same architecture."""
    from jaxlm.config import from_dict, load_run_config
    from jaxlm.convert.family import family_for_hf, family_for_model
    from jaxlm.model.config import ModelConfig

    cfg = load_run_config(name).model
    family = family_for_model(cfg)
    assert family.model_type == fmt
    hf = json.loads(json.dumps(family.config_to_hf(cfg)))
    back = from_dict(ModelConfig, family_for_hf(hf).config_from_hf(hf))
    assert back.layer_specs == cfg.layer_specs and back.rope_scaling == cfg.rope_scaling
    for field in ("vocab_size", "model_dim", "head_dim", "rope_theta", "max_context", "tie_embeddings", "qk_norm",
                  "norm_eps", "bos_token_id", "eos_token_id", "sliding_window"):
        assert getattr(back, field) == getattr(cfg, field), field
