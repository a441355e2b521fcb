"""The `posttrain:` section of a run config: which objective the train step optimises and the chat data.

objective "pretrain" (the default) leaves training as it was: next-token loss on data.sources. "sft",
"dpo" and "simpo" read `train_data` / `validation_data` (JSONL or Parquet in the Hugging Face formats,
jaxlm.posttrain.formats) through the chat template instead.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.fields import bounded, check_fields

PREFERENCE_OBJECTIVES = ("dpo", "simpo")


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    objective: Literal["pretrain", "sft", "dpo", "simpo"] = "pretrain"
    train_data: str | None = None  # a .jsonl / .parquet file or a folder of them (bundled: paths work)
    validation_data: str | None = None  # held-back records in the same format (train.eval_every validates on them)
    # a Jinja file or template text; None: the tokenizer's own (tokenizer_config.json). The run's tokenizer
    # files carry it afterwards, so exports and `jaxlm generate --chat` use it.
    chat_template: str | None = None
    train_on: Literal["assistant", "all"] = "assistant"  # sft: loss on assistant tokens only, or on every token
    too_long: Literal["drop", "truncate"] = "drop"  # an example longer than train.seq_len (counted, reported)
    # dpo: the KL weight of the implicit reward; simpo: the reward scale (SimPO's beta, ~2)
    beta: float = bounded(0.1, gt=0)
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5, note="0: plain DPO; >0: conservative DPO (cDPO)")
    simpo_gamma: float = bounded(0.5, ge=0)  # simpo: the target reward margin (TRL's simpo_gamma)

    def __post_init__(self):
        check_fields(self, "posttrain")  # train_data is checked where it is read (`jaxlm compile` needs none)

    @property
    def enabled(self) -> bool:
        return self.objective != "pretrain"

    @property
    def preference(self) -> bool:
        return self.objective in PREFERENCE_OBJECTIVES
