"""What one train step certainly holds in memory, from the config's shapes alone, so that a batch or a
model that cannot fit is refused before compiling (XLA can compile such a step for many minutes first).

The estimate is a lower bound: a step that exceeds the memory with it cannot run, and a step that
passes may still run out (then the error is one line too: jaxlm.errors.out_of_memory_message).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxlm.errors import ConfigError, memory_limit
from jaxlm.model.flops import total_params

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class StepBytes:
    """Bytes one train step of the whole job holds at once, at least."""

    activations: int  # every block's input kept for the backward pass, and one f32 loss chunk of logits
    state: int  # parameters, gradients and optimizer moments
    params: int  # number of parameters

    @property
    def total(self) -> int:
        return self.activations + self.state


def step_bytes(run_cfg) -> StepBytes:
    """A lower bound on one train step's live bytes (the whole job, all devices together)."""
    m, tc, quant = run_cfg.model, run_cfg.train, run_cfg.quant  # sizes of the real layers: any layout
    micro = tc.batch_size // tc.micro_batches
    # each block's input (B, T, D) is saved for the backward pass, even under full remat
    residual = m.num_layers * micro * tc.seq_len * m.model_dim * DTYPE_BYTES[m.compute_dtype]
    logits = micro * min(tc.loss_chunk, tc.seq_len) * m.vocab_size * 4  # one (B, loss_chunk, V) f32 chunk
    n = total_params(m)
    if run_cfg.lora.enabled:  # a frozen base: no gradients or moments for it (the adapters are small)
        state = n * min(quant.bits, quant.embed_bits) // 8 if quant.enabled else n * DTYPE_BYTES[m.param_dtype]
    else:  # weights, gradients and AdamW's two moments, in the parameter dtype
        state = 4 * n * DTYPE_BYTES[m.param_dtype]
    return StepBytes(residual + logits, state, n)


def check_fits(run_cfg, mesh) -> None:
    """Refuse a step whose lower bound exceeds the memory: on CPU this process's share of the job against
    the host's RAM; on GPU / TPU one device's share against the memory JAX reports for it (else no check)."""
    need = step_bytes(run_cfg)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    have = memory_limit(local[0])
    if local[0].platform == "cpu":  # the devices of a process share the host's RAM
        share, what = need.total / jax.process_count(), "this host's RAM"
    else:
        share, what = need.total / mesh.devices.size, f"one {local[0].device_kind}'s memory"
    if have and share > have:
        raise ConfigError(_too_big(run_cfg, need, share, have, what))


def _too_big(run_cfg, need: StepBytes, share: float, have: int, what: str) -> str:
    tc = run_cfg.train
    lower = ("train.batch_size (or raise train.micro_batches) or train.seq_len" if need.activations >= need.state
             else "model.model_dim or model.num_layers")
    return (f"one train step needs at least {share / GIB:.1f} GiB, more than {what} ({have / GIB:.1f} GiB): "
            f"activations {need.activations / GIB:.1f} GiB for {tc.batch_size // tc.micro_batches} sequences of "
            f"{tc.seq_len} tokens per micro-batch, parameters and optimizer state {need.state / GIB:.1f} GiB for "
            f"{need.params:,} parameters; lower {lower}")
