"""OpenELM layerwise scaling, computed exactly as CoreNet's `general_gpt.py` does."""

from __future__ import annotations

import numpy as np


def make_divisible(value: float, divisor: int) -> int:
    """Round to the nearest multiple of `divisor`, never going below 90% of `value`."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def _multipliers(lo_hi: tuple[float, float], num_layers: int) -> list[float]:
    lo, hi = lo_hi
    return [round(float(m), 2) for m in np.linspace(lo, hi, num_layers)]


def openelm_heads(num_layers: int, model_dim: int, head_dim: int, qkv_multipliers: tuple[float, float],
                  num_gqa_groups: int) -> tuple[list[int], list[int]]:
    """Per-layer (query heads, kv heads)."""
    q_heads = []
    for m in _multipliers(qkv_multipliers, num_layers):
        q_dim = make_divisible(model_dim * m, head_dim * num_gqa_groups)
        q_heads.append(q_dim // head_dim)
    return q_heads, [q // num_gqa_groups for q in q_heads]


def openelm_ffn_dims(num_layers: int, model_dim: int, ffn_multipliers: tuple[float, float],
                     divisor: int) -> list[int]:
    """Per-layer FFN hidden width (the width of each half of the gated projection)."""
    return [make_divisible(m * model_dim, divisor) for m in _multipliers(ffn_multipliers, num_layers)]
