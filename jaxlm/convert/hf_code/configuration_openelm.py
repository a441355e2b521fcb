"""OpenELM configuration for transformers (`trust_remote_code=True`), written by jaxlm.

The fields and the per-layer size formula are Apple's (apple/corenet, HF `configuration_openelm.py`):
per-layer query heads and FFN widths follow from `qkv_multipliers` / `ffn_multipliers` (layerwise
scaling), so `num_query_heads` / `num_kv_heads` are recomputed here as Apple's config does.
Works with transformers 4.45 and later, 5.x included (only PretrainedConfig is used).
"""

from __future__ import annotations

import numbers

import numpy as np
from transformers import PretrainedConfig

CODE_VERSION = "1"


def make_divisible(value: float, divisor: int) -> int:
    """Round to the nearest multiple of `divisor`, never below 90% of `value` (CoreNet's rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def per_layer(value, num_layers: int) -> list[float]:
    """A number -> the same for every layer; a (lo, hi) pair -> rounded linspace; else one per layer."""
    if isinstance(value, numbers.Number):
        return [float(value)] * num_layers
    if len(value) == 2:  # Apple reads any two values as a (lo, hi) pair
        return [round(float(v), 2) for v in np.linspace(value[0], value[1], num=num_layers, dtype=float)]
    if len(value) != num_layers:
        raise ValueError(f"{len(value)} multipliers for {num_layers} layers")
    return [float(v) for v in value]


class OpenELMConfig(PretrainedConfig):
    model_type = "openelm"
    # The names transformers' generic code (caches, generate, pipelines) looks for.
    attribute_map = {"num_hidden_layers": "num_transformer_layers", "hidden_size": "model_dim",
                     "max_position_embeddings": "max_context_length"}

    def __init__(self, vocab_size=32000, max_context_length=2048, num_transformer_layers=12, model_dim=2048,
                 head_dim=128, qkv_multipliers=1.0, num_query_heads=None, num_kv_heads=None, num_gqa_groups=1,
                 ffn_multipliers=4.0, ffn_with_glu=True, ffn_dim_divisor=256, activation_fn_name="swish",
                 normalization_layer_name="rms_norm", normalize_qk_projections=False,
                 share_input_output_layers=False, rope_freq_constant=10000, rope_max_length=4096,
                 initializer_range=0.02, bos_token_id=1, eos_token_id=2, **kwargs):
        if not ffn_with_glu or activation_fn_name not in ("swish", "silu") or normalization_layer_name != "rms_norm":
            raise ValueError("this OpenELM code supports the released architecture only: gated FFN (ffn_with_glu), "
                             "swish activation, rms_norm")
        self.vocab_size = vocab_size
        self.max_context_length = max_context_length
        self.num_transformer_layers = num_transformer_layers
        self.model_dim = model_dim
        self.head_dim = head_dim
        self.qkv_multipliers = qkv_multipliers
        self.num_gqa_groups = num_gqa_groups
        self.ffn_multipliers = ffn_multipliers
        self.ffn_with_glu = ffn_with_glu
        self.ffn_dim_divisor = ffn_dim_divisor
        self.activation_fn_name = activation_fn_name
        self.normalization_layer_name = normalization_layer_name
        self.normalize_qk_projections = normalize_qk_projections
        self.share_input_output_layers = share_input_output_layers
        self.rope_freq_constant = rope_freq_constant
        self.rope_max_length = rope_max_length
        self.initializer_range = initializer_range
        # Recomputed from the multipliers, as Apple's config does (stored lists are only a record).
        q_dims = [make_divisible(model_dim * m, head_dim * num_gqa_groups)
                  for m in per_layer(qkv_multipliers, num_transformer_layers)]
        self.num_query_heads = [q // head_dim for q in q_dims]
        self.num_kv_heads = [q // num_gqa_groups for q in self.num_query_heads]
        kwargs["tie_word_embeddings"] = share_input_output_layers  # shared: logits use token_embeddings
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    def ffn_dims(self) -> list[int]:
        """Per-layer FFN width (each half of the gated `proj_1`)."""
        return [make_divisible(m * self.model_dim, self.ffn_dim_divisor)
                for m in per_layer(self.ffn_multipliers, self.num_transformer_layers)]
