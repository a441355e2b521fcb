"""Which implementation each kernel site took while a program was traced, and why it is not the one
asked for: `jaxlm compile` prints it beside the kernels found in the compiled program.

A site is one traced call (a scanned layer group is traced once, so its attention counts once).
Recording is off unless a `recording()` block is open, so tracing pays nothing for it otherwise.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class Choice:
    op: str  # "attention" | "rms_norm" | "qmatmul"
    runs: str  # "xla", "cudnn", "triton", "mosaic", or "triton (interpret)" / "mosaic (interpret)"
    fallback: str = ""  # why `runs` is not the impl asked for ("" when it is)


_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("kernel_choices", default=None)


@contextlib.contextmanager
def recording():
    """Collect the `Choice` of every kernel site traced inside the block into the yielded list."""
    log: list[Choice] = []
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def note(op: str, runs: str, fallback: str = "") -> None:
    log = _LOG.get()
    if log is not None:
        log.append(Choice(op, runs, fallback))


def pallas_name(platform: str, interpret) -> str:
    """What impl "pallas" runs as: the kernel family, and whether it only interprets."""
    family = "triton" if platform == "gpu" else "mosaic"
    return f"{family} (interpret)" if interpret else family


def summary(choices: list[Choice]) -> str:
    """One line: "attention triton x1, rms_norm triton x5" (fallbacks say why)."""
    if not choices:
        return "no kernel sites"
    counts = collections.Counter(choices)
    parts = [f"{c.op} {c.runs}" + (f" [{c.fallback}]" if c.fallback else "") + f" x{n}" for c, n in counts.items()]
    return ", ".join(parts)
