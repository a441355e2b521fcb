"""The `lora:` section of a run config: low-rank adapters trained on a frozen base."""

from __future__ import annotations

import dataclasses

from jaxlm.errors import ConfigError

# Projection names a LoRA section may target, and the block attribute each one wraps.
TARGETS = {"qkv": ("attn", "qkv"), "out": ("attn", "out"), "w_in": ("ffn", "w_in"), "w_out": ("ffn", "w_out")}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False  # wrap the targets with adapters; `jaxlm train` then trains only the adapters
    rank: int = 8  # r: inner dim of each adapter
    alpha: float = 16.0  # the update is scaled by alpha / rank (as in PEFT's lora_alpha)
    targets: tuple[str, ...] = ("qkv", "out", "w_in", "w_out")  # attention qkv/out, FFN in/out projections
    seed: int = 0  # initialises A (B starts at zero, so the adapted model starts equal to the base)

    def __post_init__(self):
        if self.rank <= 0:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"lora.targets has unknown projection(s) {bad or '(empty)'}; choose from "
                              f"{', '.join(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
