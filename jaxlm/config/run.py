"""The top-level run config: one section per subsystem, each a frozen dataclass owned by its package
(the train / checkpoint / mesh sections by jaxlm.config itself: config/train.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.config.loader import from_dict, load_yaml, merge, parse_overrides
from jaxlm.config.train import CheckpointConfig, MeshConfig, TrainConfig
from jaxlm.data.config import DataConfig
from jaxlm.errors import ConfigError
from jaxlm.fields import bounded, check_fields
from jaxlm.lora.config import LoraConfig
from jaxlm.model.config import ModelConfig
from jaxlm.posttrain.config import PostTrainConfig
from jaxlm.quant.config import QuantConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    seed: int = bounded(0, ge=0, lt=2 ** 32)  # parameter init, data order and the sample; numpy's and JAX's range
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()
    quant: QuantConfig = QuantConfig()
    lora: LoraConfig = LoraConfig()
    posttrain: PostTrainConfig = PostTrainConfig()  # sft / dpo / simpo on chat data (default: pretraining)

    def __post_init__(self):
        check_fields(self)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    default: str | Path | None = None) -> RunConfig:
    """YAML file (or `default` when no path is given) + `--set` overrides -> RunConfig."""
    data = load_yaml(path if path is not None else default) if (path or default) else {}
    data = merge(data, parse_overrides(overrides))
    if "model" not in data:
        raise ConfigError(f"config {path or default} has no `model:` section; add one or `inherit:` a model config")
    run_cfg = from_dict(RunConfig, data)
    check_sample_fits(run_cfg)
    return run_cfg


def check_sample_fits(run_cfg: RunConfig, tokenizer=None) -> None:
    """The sample printed after training must fit the model's context (checked where a run is configured, not
    in RunConfig itself: a model dir's config keeps the default train section whatever its context). With the
    run's tokenizer (the trainer, before any write), the prompt's own tokens count too."""
    tc, context = run_cfg.train, run_cfg.model.max_context
    if tc.sample_prompt and tc.sample_tokens >= context:  # the prompt has at least one token
        raise ConfigError(f"train.sample_tokens {tc.sample_tokens} and the sample prompt do not fit the model's "
                          f"context (model.max_context {context}); lower train.sample_tokens, or set "
                          f"train.sample_prompt= to skip the sample")
    n = len(tokenizer.encode_input(tc.sample_prompt)) if tokenizer is not None and tc.sample_prompt else 0
    if n + tc.sample_tokens > context and n:
        raise ConfigError(f"train.sample_prompt is {n} tokens, and with train.sample_tokens {tc.sample_tokens} the "
                          f"sample needs {n + tc.sample_tokens}, over the model's context (model.max_context "
                          f"{context}); shorten the prompt, lower train.sample_tokens, or set train.sample_prompt= "
                          f"to skip the sample")
