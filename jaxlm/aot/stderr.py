"""What the accelerator compilers print to file descriptor 2 (C++ logging, out of Python's reach),
filtered: libtpu's start-up probe on a host without a TPU, and XLA's own note that rematerialization
could not fit a program, which the compile report says in its own words."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Capture fd 2 for the block; afterwards write out the lines for which `drop` is false."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not drop(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
