"""Config helpers shared by the adapters: RoPE scaling both ways, token ids, fit checks."""

from __future__ import annotations

from jaxlm.errors import JaxlmError
from jaxlm.model.config import ModelConfig


def require(ok: bool, message: str) -> None:
    if not ok:
        raise JaxlmError(message)


def require_uniform(cfg: ModelConfig, layout: str) -> None:
    """Llama and Phi-3 layouts have one size for all layers, no QK-norm and a SiLU gate."""
    require(cfg.uniform, f"model {cfg.name} has per-layer sizes; the {layout} layout needs identical layers "
                         f"(export it with --format openelm)")
    require(not cfg.qk_norm, f"model {cfg.name} uses QK-norm, which the {layout} layout lacks; use --format openelm")
    require(cfg.activation == "silu", f"the {layout} layout needs activation silu, model has {cfg.activation}")


def rope_scaling_to_hf(cfg: ModelConfig) -> dict | None:
    """jaxlm RopeScaling -> HF `rope_scaling` (both key spellings, for transformers 4.x and 5.x)."""
    rs = cfg.rope_scaling
    if rs.type == "none":
        return None
    if rs.type == "linear":
        return {"rope_type": "linear", "type": "linear", "factor": rs.factor}
    if rs.type == "llama3":
        return {"rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor, "original_max_position_embeddings": rs.original_max_position}
    return {"rope_type": "longrope", "type": "longrope", "short_factor": list(rs.short_factor),
            "long_factor": list(rs.long_factor)}


def rope_from_hf(hf: dict) -> tuple[float, dict]:
    """HF config (legacy `rope_theta` + `rope_scaling`, or transformers 5 `rope_parameters`) ->
    (rope_theta, jaxlm rope_scaling dict)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))
    kind = (scaling.get("rope_type") or scaling.get("type") or "default") if scaling else "default"
    if kind == "su":  # the first Phi-3 128k release's name for LongRoPE
        kind = "longrope"
    partial = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) if scaling else 1.0
    require(partial == 1.0, f"partial_rotary_factor {partial} is not supported (jaxlm rotates all of head_dim)")
    if kind == "default":
        return theta, {"type": "none"}
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        return theta, {"type": "llama3", "factor": float(scaling["factor"]),
                       "low_freq_factor": float(scaling["low_freq_factor"]),
                       "high_freq_factor": float(scaling["high_freq_factor"]),
                       "original_max_position": int(scaling["original_max_position_embeddings"])}
    if kind == "longrope":
        original = scaling.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
        require(original is not None, "longrope config has no original_max_position_embeddings")
        require(scaling.get("attention_factor") is None,
                "longrope with an explicit attention_factor is not supported (jaxlm derives it from the contexts)")
        return theta, {"type": "longrope", "original_max_position": int(original),
                       "short_factor": [float(v) for v in scaling["short_factor"]],
                       "long_factor": [float(v) for v in scaling["long_factor"]]}
    raise JaxlmError(f"unsupported rope type {kind!r}; supported: default, linear, llama3, longrope")


def token_id(hf: dict, key: str, default: int) -> int:
    """bos/eos id from an HF config; eos_token_id may be a list (Llama 3 instruct): jaxlm keeps the first."""
    value = hf.get(key)
    value = value[0] if isinstance(value, list) and value else value
    return default if value is None else int(value)


def uniform_config_from_hf(hf: dict, name: str, *, norm_eps: float, max_context: int, eos: int) -> dict:
    """jaxlm model-config fields of a uniform Llama-style HF config (defaults: the family's own)."""
    require(hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')!r} is not supported (silu only)")
    theta, scaling = rope_from_hf(hf)
    heads = hf["num_attention_heads"]
    return {
        "name": name, "vocab_size": hf["vocab_size"], "model_dim": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"], "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "num_query_heads": heads, "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "ffn_dim": hf["intermediate_size"], "qk_norm": False,
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)), "norm_eps": hf.get("rms_norm_eps", norm_eps),
        "rope_theta": theta, "rope_scaling": scaling, "max_context": hf.get("max_position_embeddings", max_context),
        "bos_token_id": token_id(hf, "bos_token_id", 1), "eos_token_id": token_id(hf, "eos_token_id", eos),
    }
