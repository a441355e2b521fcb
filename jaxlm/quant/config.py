"""The `quant:` section of a run config: how (and whether) a model's weights are quantized."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    bits: int = 16  # weight bits of the linear layers: 16 = not quantized; 8, 4, 3 or 2
    group_size: int | None = None  # input rows sharing one scale; none = one scale per output channel
    symmetric: bool = True  # symmetric (scale only) or asymmetric (scale + uint8 zero point)
    method: Literal["rtn", "gptq"] = "rtn"  # round-to-nearest, or GPTQ error compensation (needs calibration)
    embed_bits: int = 16  # embeddings and untied output head: 16 (kept as is) or 8 (int8 per row)
    calib_batches: int = 8  # GPTQ: calibration batches of calib_seq_len tokens ...
    calib_batch_size: int = 4  # ... with this many rows each
    calib_seq_len: int = 256
    damp: float = 0.01  # GPTQ: diagonal dampening, as a fraction of the mean Hessian diagonal

    def __post_init__(self):
        if self.bits not in (16, 8, 4, 3, 2):
            raise ConfigError(f"quant.bits must be 16 (off), 8, 4, 3 or 2, got {self.bits}")
        if self.group_size not in (None, 32, 64, 128, 256):
            raise ConfigError(f"quant.group_size must be 32, 64, 128, 256 or none (per channel), "
                              f"got {self.group_size}")
        if self.embed_bits not in (16, 8):
            raise ConfigError(f"quant.embed_bits must be 16 or 8, got {self.embed_bits}")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"quant.damp must be in [0, 1), got {self.damp}")

    @property
    def enabled(self) -> bool:
        return self.bits < 16 or self.embed_bits < 16
