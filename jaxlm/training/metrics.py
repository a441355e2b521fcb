"""Training metrics: throughput, MFU, and one logger writing console, metrics.jsonl and TensorBoard.

MFU = (training FLOPs per token x tokens per second) / (peak FLOP/s per device x devices).
FLOPs per token come from `jaxlm.model.flops.train_flops_per_token`: 6N (N = matmul weights,
output head included, embedding lookup excluded) + 12 * sum_l(Hq_l * hd) * T for attention;
the causal mask is NOT halved (PaLM / MaxText convention), so MFU is comparable with theirs.
Only process 0 writes; other processes get a silent logger.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
from tqdm import tqdm

# Dense bf16 peak FLOP/s per chip (vendor spec sheets; GPU figures without structured sparsity).
PEAK_FLOPS: dict[str, float] = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e reports its device_kind as "TPU v5 lite"
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
}


def peak_flops_per_device(device_kind: str | None = None) -> float | None:
    """Peak bf16 FLOP/s for a device kind (default: this process's first device); None when unknown (CPU)."""
    kind = (device_kind or jax.devices()[0].device_kind).lower()
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # most specific name first
        if key in kind:
            return PEAK_FLOPS[key]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, num_devices: int, peak_per_device: float | None):
    if not peak_per_device:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * num_devices)


class MetricsLogger:
    """Writes each metrics record to the console (tqdm bar + a line), RUN_DIR/metrics.jsonl and TensorBoard."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        # lazy: tensorboardX takes seconds to import; only the logging process of a run needs it
        from tensorboardX import SummaryWriter
        self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a")
        self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        # The bar only on a terminal (disable=None): in a log file it is noise; the step lines still print.
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True,
                        disable=None)

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.bar.update(n)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"validation/{k[4:]}" if k.startswith("val_") else f"train/{k}", v, step)
        self.tb.flush()
        mfu_s = f" mfu {record['mfu']:.1%}" if record.get("mfu") is not None else ""
        if record.get("val_ppl") is not None:
            mfu_s += f" val_loss {record['val_loss']:.4f} (ppl {record['val_ppl']:.1f})"
        elif record.get("val_rewards/accuracies") is not None:  # a preference objective (jaxlm.posttrain)
            mfu_s += f" val_loss {record['val_loss']:.4f} (reward accuracy {record['val_rewards/accuracies']:.3f})"
        self.bar.write(f"step {step:>6} loss {record['loss']:.4f} grad_norm {record['grad_norm']:.3f} "
                       f"lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s "
                       f"{record['step_time_s'] * 1000:.0f} ms/step{mfu_s}")
        self.bar.set_postfix(loss=f"{record['loss']:.3f}")

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.tb.close()
