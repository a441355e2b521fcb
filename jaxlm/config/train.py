"""Config sections of a training run: `train`, `checkpoint` and `mesh` in RunConfig (read by the trainer,
`jaxlm compile` and the CLI, so they sit with the run config, below every package that reads them).

Every field is commented; defaults follow OpenELM's CoreNet recipe where one applies
(AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1, cosine to 0.1 x peak, clip 1.0, z-loss 1e-4).
"""

from __future__ import annotations

import dataclasses

from jaxlm.errors import ConfigError
from jaxlm.fields import bounded, check_fields


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = bounded(1000, ge=1, lt=2 ** 31, note="the step counter is int32")  # optimizer updates in the run
    # global sequences per optimizer update (all processes, all micro-batches)
    batch_size: int = bounded(8, ge=1, lt=2 ** 31, note="an array dimension")
    seq_len: int = bounded(256, ge=1, lt=2 ** 31, note="positions are int32")  # tokens per sequence
    micro_batches: int = bounded(1, ge=1)  # gradient accumulation: the batch is split into this many sequential parts
    lr: float = bounded(3e-3, gt=0)  # peak learning rate
    warmup_steps: int = bounded(100, ge=0, note="0: no warm-up")  # linear warm-up from warmup_init_lr to lr
    warmup_init_lr: float = bounded(1e-6, ge=0)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)  # cosine decays to min_lr_ratio * lr at the last step
    b1: float = bounded(0.9, ge=0, lt=1)
    b2: float = bounded(0.95, ge=0, lt=1)
    eps: float = bounded(1e-8, gt=0)
    weight_decay: float = bounded(0.1, ge=0)  # decoupled (AdamW); not applied to norm weights (1-D per layer)
    clip_norm: float = bounded(1.0, ge=0, note="0: no clipping")  # global-norm gradient clipping; 0 disables
    z_loss: float = bounded(1e-4, ge=0, note="0: off")  # coefficient of mean(logsumexp(logits)^2) added to the loss
    # sequence positions per loss chunk: the step holds (B, loss_chunk, V) f32 logits
    loss_chunk: int = bounded(512, ge=1)
    log_every: int = bounded(10, ge=1)  # steps between metric lines (console, metrics.jsonl, TensorBoard)
    # steps between validation passes over data.validation; a run with it also validates at every checkpoint,
    # and checkpoint.keep_best then ranks by the validation loss
    eval_every: int = bounded(0, ge=0, note="0: no validation")
    eval_batches: int = bounded(0, ge=0, note="0: all of data.validation")  # batches (of batch_size) per pass
    out_dir: str = "runs/default"  # the run directory (config.yaml, tokenizer, checkpoints/, metrics)
    init_from: str | None = None  # a model dir or run dir whose params start this run (fine-tuning)
    sample_prompt: str = "ROMEO:"  # printed sample at the end of the run ("" to skip)
    sample_tokens: int = bounded(60, ge=1, note='sample_prompt: "" skips the sample')  # tokens generated for it
    peak_flops: float | None = bounded(None, gt=0)  # override the per-device peak (FLOP/s) used for MFU
    stop_after: int | None = bounded(None, ge=0)  # end the process after this many steps (tests), as if preempted
    compile_cache: bool | str = "auto"  # persistent compilation cache, so a restart loads the compiled step:
    # "auto" (<out_dir>/compile_cache, or JAX_COMPILATION_CACHE_DIR when set), "off", or a directory
    # (YAML's off/false/true are read as "off"/"off"/"auto")

    def __post_init__(self):
        check_fields(self, "train")
        if isinstance(self.compile_cache, bool):
            object.__setattr__(self, "compile_cache", "auto" if self.compile_cache else "off")
        if not str(self.compile_cache).strip():
            raise ConfigError('train.compile_cache is empty; give "auto", "off" or a directory')
        if not str(self.out_dir).strip():
            raise ConfigError("train.out_dir is empty; give the run directory (e.g. runs/my_run)")
        if self.batch_size % self.micro_batches:
            raise ConfigError(f"train.batch_size {self.batch_size} is not divisible by train.micro_batches "
                              f"{self.micro_batches}; choose a divisor")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    # steps between (asynchronous) saves; the last step is always saved
    every: int = bounded(200, ge=0, note="0: only the last step")
    keep: int = bounded(3, ge=1)  # most recent checkpoints kept ...
    keep_best: int = bounded(1, ge=0, note="0: none beyond the most recent")  # ... plus this many with the lowest loss
    async_save: bool = True  # write in a background thread while training continues

    def __post_init__(self):
        check_fields(self, "checkpoint")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape; the product must equal the number of devices (-1: fill with what is left)."""

    data: int = bounded(-1, ge=-1, note="-1: the devices left")  # pure data parallelism (parameters replicated)
    fsdp: int = bounded(1, ge=-1, note="-1: the devices left")  # batch split and parameters + optimizer state sharded
    tensor: int = bounded(1, ge=-1, note="-1: the devices left")  # heads and FFN width split (Megatron-style)

    def __post_init__(self):
        check_fields(self, "mesh")
        sizes = (self.data, self.fsdp, self.tensor)
        if 0 in sizes or sizes.count(-1) > 1:
            raise ConfigError(f"mesh sizes must be positive (at most one -1), got data={self.data}, "
                              f"fsdp={self.fsdp}, tensor={self.tensor}")
