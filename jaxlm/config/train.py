"""Config sections of a training run: `train`, `checkpoint` and `mesh` in RunConfig (read by the trainer,
`jaxlm compile` and the CLI, so they sit with the run config, below every package that reads them).

Every field is commented; defaults follow OpenELM's CoreNet recipe where one applies
(AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1, cosine to 0.1 x peak, clip 1.0, z-loss 1e-4).
"""

from __future__ import annotations

import dataclasses

from jaxlm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer updates in the whole run
    batch_size: int = 8  # global sequences per optimizer update (all processes, all micro-batches)
    seq_len: int = 256  # tokens per sequence
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many sequential parts
    lr: float = 3e-3  # peak learning rate
    warmup_steps: int = 100  # linear warm-up from warmup_init_lr to lr
    warmup_init_lr: float = 1e-6
    min_lr_ratio: float = 0.1  # cosine decays to min_lr_ratio * lr at the last step
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW); not applied to norm weights (1-D per layer)
    clip_norm: float = 1.0  # global-norm gradient clipping; 0 disables
    z_loss: float = 1e-4  # coefficient of mean(logsumexp(logits)^2) added to the loss
    loss_chunk: int = 512  # sequence positions per loss chunk: the step holds (B, loss_chunk, V) f32 logits
    log_every: int = 10  # steps between metric lines (console, metrics.jsonl, TensorBoard)
    eval_every: int = 0  # steps between validation passes over data.validation (0: none); a run with it also
    # validates at every checkpoint, and checkpoint.keep_best then ranks by the validation loss
    eval_batches: int = 0  # batches (of train.batch_size) per validation pass; 0: all of data.validation
    out_dir: str = "runs/default"  # the run directory (config.yaml, tokenizer, checkpoints/, metrics)
    init_from: str | None = None  # a model dir or run dir whose params start this run (fine-tuning)
    sample_prompt: str = "ROMEO:"  # printed sample at the end of the run ("" to skip)
    sample_tokens: int = 60  # tokens generated for that sample
    peak_flops: float | None = None  # override the per-device peak (FLOP/s) used for MFU
    stop_after: int | None = None  # end the process after this many steps (tests), as if preempted
    compile_cache: bool | str = "auto"  # persistent compilation cache, so a restart loads the compiled step:
    # "auto" (<out_dir>/compile_cache, or JAX_COMPILATION_CACHE_DIR when set), "off", or a directory
    # (YAML's off/false/true are read as "off"/"off"/"auto")

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "micro_batches", "log_every", "loss_chunk"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be a positive integer, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_batches < 0:
            raise ConfigError(f"train.eval_every and train.eval_batches must be >= 0 (0: no validation / the whole "
                              f"validation set), got {self.eval_every} and {self.eval_batches}")
        if isinstance(self.compile_cache, bool):
            object.__setattr__(self, "compile_cache", "auto" if self.compile_cache else "off")
        if not str(self.compile_cache).strip():
            raise ConfigError('train.compile_cache is empty; give "auto", "off" or a directory')
        if not str(self.out_dir).strip():
            raise ConfigError("train.out_dir is empty; give the run directory (e.g. runs/my_run)")
        if self.batch_size % self.micro_batches:
            raise ConfigError(f"train.batch_size {self.batch_size} is not divisible by train.micro_batches "
                              f"{self.micro_batches}; choose a divisor")
        for bad, rule in ((self.lr <= 0, f"train.lr must be positive, got {self.lr}"),
                          (not 0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
                          (self.warmup_steps < 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")):
            if bad:
                raise ConfigError(rule)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 200  # steps between (asynchronous) saves; the last step is always saved; 0: only the last
    keep: int = 3  # most recent checkpoints kept ...
    keep_best: int = 1  # ... plus this many with the lowest loss
    async_save: bool = True  # write in a background thread while training continues


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape; the product must equal the number of devices (-1: fill with what is left)."""

    data: int = -1  # pure data parallelism (batch split, parameters replicated)
    fsdp: int = 1  # batch split and parameters + optimizer state sharded
    tensor: int = 1  # heads and FFN width split (Megatron-style)

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ConfigError(f"mesh sizes must be positive (at most one -1), got data={self.data}, "
                              f"fsdp={self.fsdp}, tensor={self.tensor}")
