"""OpenELM <-> Apple's HF layout (model_type "openelm"). The export carries its own model code
(hf_code/configuration_openelm.py, modeling_openelm.py), so transformers loads it with
trust_remote_code; jaxlm.torch reads it without transformers.

Apple's OpenELMConfig recomputes the per-layer sizes from the multipliers (its num_query_heads
list is overwritten on load), so a model exports only if its sizes follow from
`qkv_multipliers` (a number or a (lo, hi) pair), `num_gqa_groups` and per-layer
`ffn_multipliers` with `ffn_dim_divisor`. `openelm_sizes` is that recomputation; both directions
check it against the jaxlm layer sizes.
"""

from __future__ import annotations

import numbers

from jaxlm.convert.hf_config import require, token_id
from jaxlm.convert.layout import IDENTITY, OUT_PROJ, QKV, TRANSPOSE, Family, GateUp, Rule
from jaxlm.model import layerwise
from jaxlm.model.config import LayerSpec, ModelConfig

TOP = (
    Rule(("embed",), ("transformer.token_embeddings.weight",), IDENTITY),
    Rule(("final_norm",), ("transformer.norm.weight",), IDENTITY),
    Rule(("lm_head",), ("lm_head.weight",), TRANSPOSE),  # only when share_input_output_layers is false
)
LAYER = (
    Rule(("attn_norm",), ("attn_norm.weight",), IDENTITY),
    Rule(("attn", "qkv"), ("attn.qkv_proj.weight",), QKV(fused=True)),  # rows q | k | v
    Rule(("attn", "q_norm"), ("attn.q_norm.weight",), IDENTITY),
    Rule(("attn", "k_norm"), ("attn.k_norm.weight",), IDENTITY),
    Rule(("attn", "out"), ("attn.out_proj.weight",), OUT_PROJ),
    Rule(("ffn_norm",), ("ffn_norm.weight",), IDENTITY),
    Rule(("ffn", "w_in"), ("ffn.proj_1.weight",), GateUp(fused=True)),  # gate first half
    Rule(("ffn", "w_out"), ("ffn.proj_2.weight",), TRANSPOSE),
)
AUTO_MAP = {"AutoConfig": "configuration_openelm.OpenELMConfig",
            "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"}
NORM_EPS = 1e-6  # fixed in Apple's OpenELMRMSNorm


def openelm_sizes(hf: dict) -> list[LayerSpec]:
    """Per-layer sizes exactly as Apple's OpenELMConfig.__post_init__ and modeling code derive them."""
    n, d, hd, groups = hf["num_transformer_layers"], hf["model_dim"], hf["head_dim"], hf["num_gqa_groups"]
    qkv = hf["qkv_multipliers"]
    if isinstance(qkv, numbers.Number):
        q_heads = [layerwise.make_divisible(d * qkv, hd * groups) // hd] * n
    else:
        require(len(qkv) == 2, f"qkv_multipliers must be a number or two numbers, got {qkv}")
        q_heads, _ = layerwise.openelm_heads(n, d, hd, tuple(qkv), groups)
    return [LayerSpec(q, q // groups, layerwise.make_divisible(m * d, hf["ffn_dim_divisor"]))
            for q, m in zip(q_heads, ffn_multiplier_list(hf["ffn_multipliers"], n))]


def ffn_multiplier_list(ffn, n: int) -> list[float]:
    if isinstance(ffn, numbers.Number):
        return [float(ffn)] * n
    if len(ffn) == 2:  # Apple reads any two values as a (lo, hi) pair, even for 2 layers
        return layerwise._multipliers(tuple(ffn), n)
    require(len(ffn) == n, f"ffn_multipliers has {len(ffn)} entries for {n} layers")
    return [float(m) for m in ffn]


def config_to_hf(cfg: ModelConfig) -> dict:
    require(cfg.rope_scaling.type == "none", f"the OpenELM layout has no {cfg.rope_scaling.type} RoPE scaling")
    require(cfg.activation == "silu", f"the OpenELM layout needs activation silu, model has {cfg.activation}")
    require(cfg.norm_eps == NORM_EPS, f"the OpenELM layout fixes RMSNorm eps at 1e-6, model has {cfg.norm_eps}")
    specs = cfg.layer_specs
    ratios = {s.num_query_heads // s.num_kv_heads for s in specs}
    require(len(ratios) == 1, f"OpenELM needs one query/kv head ratio for all layers, model has {sorted(ratios)}")
    groups = ratios.pop()
    if cfg.num_query_heads is None and cfg.num_kv_heads is None and cfg.num_gqa_groups == groups:
        qkv = list(cfg.qkv_multipliers)
    else:
        qkv = specs[0].num_query_heads * cfg.head_dim / cfg.model_dim
    if cfg.ffn_dim is None:
        ffn, divisor = layerwise._multipliers(cfg.ffn_multipliers, cfg.num_layers), cfg.ffn_dim_divisor
    else:  # explicit widths: multiplier F/D with divisor 1 rounds back to F
        ffn, divisor = [s.ffn_dim / cfg.model_dim for s in specs], 1
    hf = {
        "architectures": ["OpenELMForCausalLM"], "model_type": "openelm", "auto_map": dict(AUTO_MAP),
        "vocab_size": cfg.vocab_size, "max_context_length": cfg.max_context,
        "num_transformer_layers": cfg.num_layers, "model_dim": cfg.model_dim, "head_dim": cfg.head_dim,
        "qkv_multipliers": qkv, "num_query_heads": [s.num_query_heads for s in specs],
        "num_kv_heads": [s.num_kv_heads for s in specs], "num_gqa_groups": groups,
        "ffn_multipliers": ffn, "ffn_with_glu": True, "ffn_dim_divisor": divisor,
        "activation_fn_name": "swish", "normalization_layer_name": "rms_norm",
        "normalize_qk_projections": cfg.qk_norm, "share_input_output_layers": cfg.tie_embeddings,
        "rope_freq_constant": cfg.rope_theta, "rope_max_length": 2 * cfg.max_context,
        "initializer_range": 0.02, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "use_cache": True,
    }
    require(openelm_sizes(hf) == list(specs),
            f"model {cfg.name}'s per-layer head counts do not follow OpenELM's layerwise-scaling formula, "
            f"so Apple's OpenELMConfig would rebuild different sizes")
    return hf


def config_from_hf(hf: dict) -> dict:
    require(hf.get("ffn_with_glu", True), "OpenELM without a gated FFN (ffn_with_glu false) is not supported")
    require(hf.get("activation_fn_name", "swish") in ("swish", "silu"),
            f"activation_fn_name {hf.get('activation_fn_name')!r} is not supported (swish only)")
    require(hf.get("normalization_layer_name", "rms_norm") == "rms_norm", "only rms_norm OpenELM models are supported")
    specs = openelm_sizes(hf)
    for key, got in (("num_query_heads", [s.num_query_heads for s in specs]),
                     ("num_kv_heads", [s.num_kv_heads for s in specs])):
        require(hf.get(key) in (None, got), f"config.json {key} {hf.get(key)} disagrees with the sizes its "
                                            f"multipliers give ({got})")
    qkv, ffn, n = hf["qkv_multipliers"], hf["ffn_multipliers"], hf["num_transformer_layers"]
    if isinstance(qkv, numbers.Number):  # one size for all layers
        sizes = {"num_query_heads": specs[0].num_query_heads, "num_kv_heads": specs[0].num_kv_heads}
    else:  # layerwise scaling, recomputed by jaxlm.model.layerwise exactly as Apple does
        sizes = {"qkv_multipliers": list(qkv)}
    if not isinstance(ffn, numbers.Number) and len(ffn) == 2:
        sizes["ffn_multipliers"] = list(ffn)
    else:
        sizes["ffn_dim"] = [s.ffn_dim for s in specs]
    return {
        "name": "openelm", "vocab_size": hf["vocab_size"], "model_dim": hf["model_dim"],
        "num_layers": n, "head_dim": hf["head_dim"], **sizes, "num_gqa_groups": hf["num_gqa_groups"],
        "ffn_dim_divisor": hf["ffn_dim_divisor"], "qk_norm": bool(hf.get("normalize_qk_projections", False)),
        "tie_embeddings": bool(hf.get("share_input_output_layers", False)), "norm_eps": NORM_EPS,
        "rope_theta": float(hf.get("rope_freq_constant", 10000)), "max_context": hf.get("max_context_length", 2048),
        "bos_token_id": token_id(hf, "bos_token_id", 1), "eos_token_id": token_id(hf, "eos_token_id", 2),
    }


FAMILY = Family("openelm", TOP, "transformer.layers.{i}.", LAYER, config_to_hf, config_from_hf,
                code_files=("configuration_openelm.py", "modeling_openelm.py"))
