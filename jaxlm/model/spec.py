"""The sizes of one decoder layer: the unit of OpenELM's layer-wise scaling, of layer groups and of
layer buckets (a leaf module, so that config.py, buckets.py and flops.py need not import each other)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Sizes of one decoder layer."""

    num_query_heads: int
    num_kv_heads: int
    ffn_dim: int
