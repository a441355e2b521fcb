"""The weight layout of a decoder block, defined once: each weight's place in the Block, its input
(contracted) and output dims, and their logical axes (the sharding rules map axes to mesh axes).

The model creates its parameters from this table; quantization (which dims a scale groups over),
LoRA (the shapes and axes of A and B) and dequantization / merging (the axes of the plain weight
they write back) read it, so a weight changed here changes everywhere. A stacked group adds a
leading "layers" axis.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Weight:
    module: str  # attribute of the Block: "attn" or "ffn"
    attr: str  # attribute of that module
    in_axes: tuple[str | None, ...]  # the dims a token's input contracts with
    out_axes: tuple[str | None, ...]

    @property
    def axes(self) -> tuple[str | None, ...]:
        return self.in_axes + self.out_axes

    @property
    def dims(self) -> tuple[int, int]:
        """(input dims, output dims)."""
        return len(self.in_axes), len(self.out_axes)


BLOCK_WEIGHTS: dict[str, Weight] = {
    "attn.qkv": Weight("attn", "qkv", ("embed",), ("kv_heads", None, "head_dim")),  # (D, Hkv, G + 2, hd)
    "attn.out": Weight("attn", "out", ("kv_heads", None, "head_dim"), ("embed",)),  # (Hkv, G, hd, D)
    "ffn.w_in": Weight("ffn", "w_in", ("embed",), (None, "mlp")),  # (D, 2, F): gate and up
    "ffn.w_out": Weight("ffn", "w_out", ("mlp",), ("embed",)),  # (F, D)
}
EMBED_AXES = ("vocab", "embed")  # embed (V, D)
LM_HEAD_AXES = ("embed", "vocab")  # lm_head (D, V), untied models only
NORM_AXES = ("norm",)
