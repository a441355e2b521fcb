"""The `lora:` section of a run config: low-rank adapters trained on a frozen base."""

from __future__ import annotations

import dataclasses

from jaxlm.errors import ConfigError
from jaxlm.fields import bounded, check_fields

# Projection names a LoRA section may target, and the block attribute each one wraps.
TARGETS = {"qkv": ("attn", "qkv"), "out": ("attn", "out"), "w_in": ("ffn", "w_in"), "w_out": ("ffn", "w_out")}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False  # wrap the targets with adapters; `jaxlm train` then trains only the adapters
    rank: int = bounded(8, ge=1)  # r: inner dim of each adapter
    alpha: float = bounded(16.0, gt=0)  # the update is scaled by alpha / rank (as in PEFT's lora_alpha)
    targets: tuple[str, ...] = ("qkv", "out", "w_in", "w_out")  # attention qkv/out, FFN in/out projections
    # initialises A (B starts at zero, so the adapted model starts equal to the base)
    seed: int = bounded(0, ge=0, lt=2 ** 32)

    def __post_init__(self):
        check_fields(self, "lora")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"lora.targets has unknown projection(s) {bad or '(empty)'}; choose from "
                              f"{', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
