"""The `quant:` section of a run config: how (and whether) a model's weights are quantized."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.fields import bounded, check_fields


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    # weight bits of the linear layers: 16 = not quantized; 8, 4, 3 or 2
    bits: int = bounded(16, one_of=(16, 8, 4, 3, 2), note="16: off")
    # input rows sharing one scale; none = one scale per output channel
    group_size: int | None = bounded(None, one_of=(32, 64, 128, 256), note="or none: per channel")
    symmetric: bool = True  # symmetric (scale only) or asymmetric (scale + uint8 zero point)
    method: Literal["rtn", "gptq"] = "rtn"  # round-to-nearest, or GPTQ error compensation (needs calibration)
    # embeddings and untied output head: 16 (kept as is) or 8 (int8 per row)
    embed_bits: int = bounded(16, one_of=(16, 8), note="16: off")
    calib_batches: int = bounded(8, ge=1)  # GPTQ: calibration batches of calib_seq_len tokens ...
    calib_batch_size: int = bounded(4, ge=1)  # ... with this many rows each
    calib_seq_len: int = bounded(256, ge=1)
    damp: float = bounded(0.01, ge=0, lt=1)  # GPTQ: diagonal dampening, as a fraction of the mean Hessian diagonal

    def __post_init__(self):
        check_fields(self, "quant")

    @property
    def enabled(self) -> bool:
        return self.bits < 16 or self.embed_bits < 16
