"""GGUF model metadata (`general.*`, `{arch}.*`) and RoPE tensors, both ways.

To GGUF: the keys llama.cpp's convert_hf_to_gguf.py writes for the same Hugging Face model (its
LlamaModel, Phi3MiniModel and OpenELMModel set_gguf_parameters), read off the HF config.json the
family adapter makes, plus the extra tensors it generates: llama3 RoPE scaling as `rope_freqs`
(one divisor per frequency), Phi-3 LongRoPE as `rope_factors_long` / `rope_factors_short` with
`rope.scaling.attn_factor`.
From GGUF: the `model:` section of a jaxlm config. `rope_freqs` has no parameters of its own, so
llama3 scaling is fitted to it and checked to give the same divisors.
"""

from __future__ import annotations

import math
import re

import gguf
import numpy as np

from jaxlm.convert.family import Family
from jaxlm.convert.gguf_layout import ROPE_FREQS, ROPE_LONG, ROPE_SHORT
from jaxlm.errors import JaxlmError
from jaxlm.model.config import ModelConfig, RopeScaling
from jaxlm.model.rope import inverse_frequencies, longrope_attention_factor

FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
              "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}
ARCH_KEYS = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope


PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def write_metadata(w: gguf.GGUFWriter, family: Family, cfg: ModelConfig, file_type: str, n_params: int,
                   tokens: list[str]) -> None:
    """general.* and the architecture's keys, in the converter's order."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(model_name(cfg.name, tokens))
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    {"llama": _llama, "phi3": _phi3, "openelm": _openelm}[family.model_type](w, family, cfg)
    w.add_file_type(FILE_TYPES[file_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def model_name(name: str, tokens: list[str]) -> str:
    """general.name. llama.cpp sets Phi-3's special-token rules on any model whose name contains "phi3" or
    "phi-3", and fails to load one whose vocabulary lacks their tokens: such a name is written "phi_3"."""
    if set(PHI3_TOKENS) <= set(tokens):
        return name
    return re.sub(r"(?i)(phi)-?(3)", r"\1_\2", name)


def _llama(w, family: Family, cfg: ModelConfig) -> None:
    hf = family.config_to_hf(cfg)  # refuses what the llama layout cannot hold
    _common(w, hf)
    if cfg.rope_scaling.type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling.factor)
    w.add_rope_freq_base(hf["rope_theta"])
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)


def _common(w, hf: dict) -> None:
    w.add_block_count(hf["num_hidden_layers"])
    w.add_context_length(hf["max_position_embeddings"])
    w.add_embedding_length(hf["hidden_size"])
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(hf["num_attention_heads"])
    w.add_head_count_kv(hf["num_key_value_heads"])


def _phi3(w, family: Family, cfg: ModelConfig) -> None:
    hf = family.config_to_hf(cfg)
    if cfg.rope_scaling.type == "longrope":
        w.add_rope_scaling_attn_factors(longrope_attention_factor(cfg.max_context,
                                                                  cfg.rope_scaling.original_max_position))
    _common(w, hf)
    w.add_rope_scaling_orig_ctx_len(hf["original_max_position_embeddings"])
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(hf["rope_theta"])
    # 0 = none (the converter's marker). llama.cpp reads it but disables Phi-3's window for now (its PR 13676).
    w.add_sliding_window(cfg.sliding_window or 0)


def _openelm(w, family: Family, cfg: ModelConfig) -> None:
    # llama.cpp's openelm graph always applies QK-norm and reads the output head from token_embd.
    if not cfg.qk_norm or not cfg.tie_embeddings:
        raise JaxlmError(f"llama.cpp's openelm architecture needs QK-norm and tied embeddings; model {cfg.name} has "
                         f"qk_norm={cfg.qk_norm}, tie_embeddings={cfg.tie_embeddings}")
    if cfg.rope_scaling.type != "none" or cfg.activation != "silu" or cfg.sliding_window is not None:
        raise JaxlmError(f"llama.cpp's openelm architecture has no RoPE scaling, sliding window or "
                         f"{cfg.activation}; model {cfg.name} uses one")
    specs = cfg.layer_specs
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_context)
    w.add_embedding_length(cfg.model_dim)
    w.add_feed_forward_length([s.ffn_dim for s in specs])
    w.add_head_count([s.num_query_heads for s in specs])
    w.add_head_count_kv([s.num_kv_heads for s in specs])
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)


def extra_tensors(family: Family, cfg: ModelConfig) -> list[tuple[str, np.ndarray]]:
    """The RoPE tensors llama.cpp reads (float32), first in the file as the converter writes them."""
    rs = cfg.rope_scaling
    if family.model_type == "llama" and rs.type == "llama3":
        base = inverse_frequencies(cfg.head_dim, cfg.rope_theta, RopeScaling())
        return [(ROPE_FREQS, (base / inverse_frequencies(cfg.head_dim, cfg.rope_theta, rs)).astype(np.float32))]
    if family.model_type == "phi3" and rs.type == "longrope":
        return [(ROPE_LONG, np.asarray(rs.long_factor, np.float32)),
                (ROPE_SHORT, np.asarray(rs.short_factor, np.float32))]
    return []


# ---- from GGUF ----

def read_fields(reader: gguf.GGUFReader) -> dict:
    """Every key -> its value (str, number, bool or list)."""
    out = {}
    for name, field in reader.fields.items():
        if field.types and not name.startswith("GGUF."):
            value = field.contents()
            value = value.tolist() if isinstance(value, np.ndarray) else value
            out[name] = short_float(value) if field.types == [gguf.GGUFValueType.FLOAT32] else value
    return out


def short_float(x: float) -> float:
    """A float32 value as the shortest decimal that rounds to it (1e-06, not 9.99999997e-07), so that
    numbers typed into a config come back as typed."""
    return float(str(np.float32(x)))


def config_from_gguf(fields: dict, tensors: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict:
    """The `model:` section for a GGUF's llama / phi3 / openelm metadata. tensors: the small RoPE
    tensors (float32); shapes: every tensor's numpy shape."""
    arch = fields.get("general.architecture")
    readers = {"llama": _llama_from, "phi3": _phi3_from, "openelm": _openelm_from}
    if arch not in readers:
        raise JaxlmError(f"GGUF architecture {arch!r} is not supported; jaxlm reads {', '.join(readers)}")
    if "token_embd.weight" not in shapes:
        raise JaxlmError("the GGUF file has no token_embd.weight tensor; it is not a complete model")
    key = _Keys(fields, arch)
    vocab = shapes["token_embd.weight"][0]
    section = readers[arch](key, tensors, shapes)
    section.update(vocab_size=vocab, model_dim=key("embedding_length"), num_layers=key("block_count"),
                   norm_eps=float(key("attention.layer_norm_rms_epsilon")), max_context=key("context_length"),
                   rope_theta=float(key("rope.freq_base", 10000.0)))
    return section


class _Keys:
    """fields[f"{arch}.{name}"], a missing required key named in one line."""

    def __init__(self, fields: dict, arch: str):
        self.fields, self.arch = fields, arch

    def __call__(self, name: str, default=...):
        value = self.fields.get(f"{self.arch}.{name}", default)
        if value is ...:
            raise JaxlmError(f"GGUF metadata lacks {self.arch}.{name}; convert the model again with llama.cpp's "
                             f"convert_hf_to_gguf.py or jaxlm convert to-gguf")
        return value


def _uniform(key: _Keys, shapes: dict) -> dict:
    heads = key("attention.head_count")
    head_dim = key("attention.key_length", key("embedding_length") // heads)
    if key("rope.dimension_count", head_dim) != head_dim:
        raise JaxlmError(f"GGUF rotates {key('rope.dimension_count')} of {head_dim} head dims (partial RoPE); jaxlm "
                         f"rotates all of head_dim")
    return {"head_dim": head_dim, "num_query_heads": heads, "num_kv_heads": key("attention.head_count_kv", heads),
            "ffn_dim": key("feed_forward_length"), "qk_norm": False, "tie_embeddings": "output.weight" not in shapes}


def _llama_from(key: _Keys, tensors: dict, shapes: dict) -> dict:
    section = {"name": "llama", **_uniform(key, shapes), "rope_scaling": {"type": "none"}}
    kind = key("rope.scaling.type", "none")
    if kind == "linear":
        section["rope_scaling"] = {"type": "linear", "factor": float(key("rope.scaling.factor"))}
    elif kind != "none":
        raise JaxlmError(f"GGUF RoPE scaling {kind!r} is not supported; jaxlm reads linear and llama3 (rope_freqs)")
    if ROPE_FREQS in tensors:
        section["rope_scaling"] = llama3_from_divisors(tensors[ROPE_FREQS], section["head_dim"],
                                                       float(key("rope.freq_base", 10000.0)))
    return section


def _phi3_from(key: _Keys, tensors: dict, shapes: dict) -> dict:
    section = {"name": "phi3", **_uniform(key, shapes), "sliding_window": key("attention.sliding_window", 0) or None}
    if ROPE_LONG in tensors:
        original, context = key("rope.scaling.original_context_length"), key("context_length")
        attn = key("rope.scaling.attn_factor", None)
        if attn is not None and not math.isclose(attn, longrope_attention_factor(context, original), rel_tol=1e-6):
            raise JaxlmError(f"GGUF LongRoPE attention factor {attn} differs from the one jaxlm derives from the "
                             f"contexts ({context} / {original}); jaxlm cannot represent it")
        section["rope_scaling"] = {"type": "longrope", "original_max_position": original,
                                   "long_factor": [short_float(x) for x in tensors[ROPE_LONG]],
                                   "short_factor": [short_float(x) for x in tensors[ROPE_SHORT]]}
    return section


def _openelm_from(key: _Keys, tensors: dict, shapes: dict) -> dict:
    n = key("block_count")
    per_layer = [key(k) for k in ("attention.head_count", "attention.head_count_kv", "feed_forward_length")]
    per_layer = [list(v) if isinstance(v, list) else [v] * n for v in per_layer]
    return {"name": "openelm", "head_dim": key("attention.key_length"), "num_query_heads": per_layer[0],
            "num_kv_heads": per_layer[1], "ffn_dim": per_layer[2], "qk_norm": True, "tie_embeddings": True}


def llama3_from_divisors(divisors: np.ndarray, head_dim: int, theta: float) -> dict:
    """Llama 3.1 scaling parameters that give `rope_freqs` (per-frequency divisors) again.

    Only factor and the two wavelength bounds (original context / low and / high freq factor) act,
    so the bounds are fitted with low_freq_factor 1 and checked by recomputing the divisors."""
    r = np.asarray(divisors, np.float64)
    factor = float(r.max())
    if factor <= 1.0:
        return {"type": "none"}
    wavelen = 2 * math.pi / inverse_frequencies(head_dim, theta, RopeScaling())
    high, low = np.isclose(r, 1.0, rtol=1e-6), np.isclose(r, factor, rtol=1e-6)
    mid = ~high & ~low
    # inside the bounds, 1/r = 1/f + s (1 - 1/f) with s linear in 1/wavelength
    lo_w = wavelen[low].min() if low.any() else wavelen.max() * 2  # low-frequency bound lies below this ...
    hi_w = wavelen[high].max() if high.any() else wavelen.min() / 2  # ... the high one above this
    s = (1 / r[mid] - 1 / factor) / (1 - 1 / factor)
    if mid.sum() >= 2:
        a, b = np.polyfit(1 / wavelen[mid], s, 1)  # s = a / wavelen + b
        low_bound, high_bound = -a / b, a / (1 - b)  # wavelengths where s = 0 and s = 1
    else:  # any bounds between the neighbouring frequencies give the same divisors
        low_bound = ((wavelen[mid].max() if mid.any() else hi_w) + lo_w) / 2
        if mid.any():  # the one point inside fixes the other bound
            high_bound = 1 / (1 / low_bound + (1 / wavelen[mid][0] - 1 / low_bound) / s[0])
        else:
            high_bound = (hi_w + low_bound) / 2
    original = max(1, round(low_bound))
    fitted = (factor, original / low_bound, original / high_bound)
    for values in ([float(f"{x:.6g}") for x in fitted], [float(x) for x in fitted]):  # tidy numbers when they fit
        scaling = {"type": "llama3", "factor": values[0], "low_freq_factor": values[1],
                   "high_freq_factor": values[2], "original_max_position": original}
        base = inverse_frequencies(head_dim, theta, RopeScaling())
        if np.allclose(base / inverse_frequencies(head_dim, theta, RopeScaling(**scaling)), r, rtol=1e-5, atol=0):
            return scaling
    raise JaxlmError("GGUF rope_freqs does not follow Llama 3.1's frequency scaling, which is the only per-frequency "
                     "scaling jaxlm has for the llama architecture")
