"""Output folders written atomically: a temporary sibling, renamed when complete."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jaxlm.errors import JaxlmError


def check_output(out: Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder (or a file) unless `overwrite`."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise JaxlmError(f"output {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise JaxlmError(f"output folder {out} exists and is not empty; choose another path or pass --overwrite")
    return out


def temp_sibling(out: Path, tag: str) -> Path:
    tmp = out.with_name(f".{out.name}.{tag}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` folder."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
