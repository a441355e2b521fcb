"""What every side-by-side benchmark here shares, so that its figures cannot mislead.

- The load average is read before and after; a results file is written only when both stay at
  or below the core count (`--force` overrides, and the file then says so).
- The sides run interleaved, round after round (A B A B ...), so a disturbance hits both.
- PyTorch is timed at its best thread count (`best_torch_threads`), not at whatever it picks.
- Every results file names the hardware, the load and the command.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def hardware() -> str:
    from jaxlm import host_malloc

    malloc = "glibc malloc tuned as the jaxlm CLI tunes it" if host_malloc.applied() else \
        f"malloc not tuned ({host_malloc.skip_reason() or 'tune() not called'})"
    return f"{cores()} CPU cores ({platform.processor() or platform.machine()}), no GPU or TPU; {malloc}"



def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def add_args(ap, rounds: int = 3) -> None:
    ap.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (>= 3 for a published figure)")
    ap.add_argument("--force", action="store_true", help="write the results file even on a loaded machine")


class LoadWatch:
    """Load average at the start and at the end of a measurement."""

    def __init__(self):
        self.before = load()
        self.after = None
        print(f"host: {hardware()}; load average before {self.before:.2f}", flush=True)

    def stop(self) -> "LoadWatch":
        self.after = load()
        print(f"load average after {self.after:.2f}", flush=True)
        return self

    @property
    def quiet(self) -> bool:
        return self.quiet_besides(0)

    def quiet_besides(self, own_load: float) -> bool:
        """Quiet before, and at the end no busier than the cores plus the load the benchmark adds on purpose."""
        after = self.after if self.after is not None else load()
        return self.before <= cores() and after <= cores() + own_load

    def line(self) -> str:
        return f"load average {self.before:.2f} before, {self.after:.2f} after (1 min, {cores()} cores)"


def interleaved(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each side once per round, in turn; returns every side's values (seconds or rates)."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, fn in sides.items():
            out[name].append(fn())
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.4g}" for n, v in out.items()), flush=True)
    return out


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def best_torch_threads(fn: Callable[[], None], repeats: int = 2) -> int:
    """Time fn at 1 thread and at every core; keep torch on the faster (OpenMP spin-waits make all
    cores slower on a shared or small machine), and return that count."""
    import torch

    speed = {}
    for threads in sorted({1, cores()}):
        torch.set_num_threads(threads)
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        speed[threads] = best
    pick = min(speed, key=speed.get)
    print("  torch thread probe (s):", {k: round(v, 4) for k, v in speed.items()}, "->", pick, flush=True)
    torch.set_num_threads(pick)
    return pick


def write_results(path: Path, text: str, watch: LoadWatch, force: bool, own_load: float = 0) -> int:
    """Write text to path only on a quiet machine (or with force); returns the exit code. own_load: the
    load the benchmark adds on purpose (a busy process), allowed at the end on top of the cores."""
    print(text)
    is_quiet = watch.quiet_besides(own_load)
    if not is_quiet and not force:
        print(f"load above {cores()} cores ({watch.line()}): not writing {path}; rerun on a quiet machine "
              f"(or --force)")
        return 1
    if not is_quiet:
        text += f"\n**Measured on a loaded machine ({watch.line()}), written with --force: do not quote.**\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {path}")
    return 0
