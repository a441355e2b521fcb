"""The top-level run config: one section per subsystem, each a frozen dataclass owned by its package
(the train / checkpoint / mesh sections by jaxlm.config itself: config/train.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.config.loader import from_dict, load_yaml, merge, parse_overrides
from jaxlm.config.train import CheckpointConfig, MeshConfig, TrainConfig
from jaxlm.data.config import DataConfig
from jaxlm.errors import ConfigError
from jaxlm.model.config import ModelConfig
from jaxlm.lora.config import LoraConfig
from jaxlm.quant.config import QuantConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    seed: int = 0
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()
    quant: QuantConfig = QuantConfig()
    lora: LoraConfig = LoraConfig()

    def __post_init__(self):
        # Quantized weights and LoRA adapters are laid out per stored (unpadded) layer: such runs keep
        # the stored layout in memory too (model.scan_pad_budget only changes speed, never the model).
        if (self.quant.enabled or self.lora.enabled) and self.model.scan_pad_budget:
            object.__setattr__(self, "model", self.model.stored())


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    default: str | Path | None = None) -> RunConfig:
    """YAML file (or `default` when no path is given) + `--set` overrides -> RunConfig."""
    data = load_yaml(path if path is not None else default) if (path or default) else {}
    data = merge(data, parse_overrides(overrides))
    if "model" not in data:
        raise ConfigError(f"config {path or default} has no `model:` section; add one or `inherit:` a model config")
    return from_dict(RunConfig, data)
