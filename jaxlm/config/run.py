"""The top-level run config: one section per subsystem, each a frozen dataclass owned by its package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.config.loader import from_dict, load_yaml, merge, parse_overrides
from jaxlm.errors import ConfigError
from jaxlm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    seed: int = 0


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    default: str | Path | None = None) -> RunConfig:
    """YAML file (or `default` when no path is given) + `--set` overrides -> RunConfig."""
    data = load_yaml(path if path is not None else default) if (path or default) else {}
    data = merge(data, parse_overrides(overrides))
    if "model" not in data:
        raise ConfigError(f"config {path or default} has no `model:` section; add one or `inherit:` a model config")
    return from_dict(RunConfig, data)
