"""Llama 3 / 3.1 <-> `LlamaForCausalLM` (model_type "llama"): the key map and config mapping; and
Mistral (`MistralForCausalLM`, model_type "mistral"): Llama's keys with a sliding window."""

from __future__ import annotations

import dataclasses

from jaxlm.convert.hf_config import require, require_uniform, rope_scaling_to_hf, uniform_config_from_hf
from jaxlm.convert.layout import IDENTITY, OUT_PROJ, QKV, TRANSPOSE, Family, GateUp, Rule
from jaxlm.model.config import ModelConfig

TOP = (
    Rule(("embed",), ("model.embed_tokens.weight",), IDENTITY),
    Rule(("final_norm",), ("model.norm.weight",), IDENTITY),
    Rule(("lm_head",), ("lm_head.weight",), TRANSPOSE),
)
LAYER = (
    Rule(("attn_norm",), ("input_layernorm.weight",), IDENTITY),
    Rule(("attn", "qkv"), ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
         QKV(fused=False)),
    Rule(("attn", "out"), ("self_attn.o_proj.weight",), OUT_PROJ),
    Rule(("ffn_norm",), ("post_attention_layernorm.weight",), IDENTITY),
    Rule(("ffn", "w_in"), ("mlp.gate_proj.weight", "mlp.up_proj.weight"), GateUp(fused=False)),
    Rule(("ffn", "w_out"), ("mlp.down_proj.weight",), TRANSPOSE),
)


def config_to_hf(cfg: ModelConfig) -> dict:
    require_uniform(cfg, "Llama")
    require(cfg.sliding_window is None, f"the Llama layout has no sliding window (transformers' Llama attends to "
                                        f"everything); export model {cfg.name} with --format mistral or phi3")
    require(cfg.rope_scaling.type in ("none", "linear", "llama3"),
            f"the Llama layout has no {cfg.rope_scaling.type} RoPE scaling; use --format phi3")
    spec = cfg.layer_specs[0]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.model_dim, "intermediate_size": spec.ffn_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": spec.num_query_heads,
        "num_key_value_heads": spec.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_context, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling_to_hf(cfg),
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "initializer_range": 0.02,
        "use_cache": True,
    }


def config_from_hf(hf: dict) -> dict:
    require(not hf.get("attention_bias") and not hf.get("mlp_bias"), "Llama checkpoints with biases are not supported")
    return uniform_config_from_hf(hf, "llama", norm_eps=1e-6, max_context=2048, eos=2)


FAMILY = Family("llama", TOP, "model.layers.{i}.", LAYER, config_to_hf, config_from_hf)


def mistral_config_to_hf(cfg: ModelConfig) -> dict:
    hf = config_to_hf(dataclasses.replace(cfg, sliding_window=None))
    for key in ("attention_bias", "mlp_bias"):
        del hf[key]
    return {**hf, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "sliding_window": cfg.sliding_window}


def mistral_config_from_hf(hf: dict) -> dict:
    # transformers' Mistral applies sliding_window (create_sliding_window_causal_mask), Llama does not.
    return {**uniform_config_from_hf(hf, "mistral", norm_eps=1e-6, max_context=32768, eos=2),
            "sliding_window": hf.get("sliding_window")}


MISTRAL = Family("mistral", TOP, "model.layers.{i}.", LAYER, mistral_config_to_hf, mistral_config_from_hf)
