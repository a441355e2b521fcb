"""Phi-3 <-> `Phi3ForCausalLM` (model_type "phi3"): fused qkv_proj and gate_up_proj, LongRoPE factors."""

from __future__ import annotations

from jaxlm.convert import llama
from jaxlm.convert.hf_config import require, require_uniform, rope_scaling_to_hf, uniform_config_from_hf
from jaxlm.convert.layout import IDENTITY, OUT_PROJ, QKV, TRANSPOSE, Family, GateUp, Rule
from jaxlm.model.config import ModelConfig

TOP = llama.TOP  # same names: model.embed_tokens, model.norm, lm_head
LAYER = (
    Rule(("attn_norm",), ("input_layernorm.weight",), IDENTITY),
    Rule(("attn", "qkv"), ("self_attn.qkv_proj.weight",), QKV(fused=True)),  # rows q | k | v
    Rule(("attn", "out"), ("self_attn.o_proj.weight",), OUT_PROJ),
    Rule(("ffn_norm",), ("post_attention_layernorm.weight",), IDENTITY),
    Rule(("ffn", "w_in"), ("mlp.gate_up_proj.weight",), GateUp(fused=True)),  # gate rows first
    Rule(("ffn", "w_out"), ("mlp.down_proj.weight",), TRANSPOSE),
)


def config_to_hf(cfg: ModelConfig) -> dict:
    require_uniform(cfg, "Phi-3")
    spec = cfg.layer_specs[0]
    require(spec.num_query_heads * cfg.head_dim == cfg.model_dim,
            f"Phi-3 derives head_dim as model_dim / heads; {cfg.model_dim} / {spec.num_query_heads} != "
            f"{cfg.head_dim}; use --format llama")
    require(cfg.rope_scaling.type in ("none", "longrope"),
            f"the Phi-3 layout has no {cfg.rope_scaling.type} RoPE scaling; use --format llama")
    longrope = cfg.rope_scaling.type == "longrope"
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.model_dim, "intermediate_size": spec.ffn_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": spec.num_query_heads,
        "num_key_value_heads": spec.num_kv_heads, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_context,
        "original_max_position_embeddings": cfg.rope_scaling.original_max_position if longrope else cfg.max_context,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling_to_hf(cfg),
        "tie_word_embeddings": cfg.tie_embeddings, "sliding_window": cfg.sliding_window,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": None,
        "initializer_range": 0.02, "use_cache": True,
    }


def config_from_hf(hf: dict) -> dict:
    # transformers' Phi-3 applies sliding_window (create_sliding_window_causal_mask): so does jaxlm.
    return {**uniform_config_from_hf(hf, "phi3", norm_eps=1e-5, max_context=4096, eos=32000),
            "sliding_window": hf.get("sliding_window")}


FAMILY = Family("phi3", TOP, "model.layers.{i}.", LAYER, config_to_hf, config_from_hf)
