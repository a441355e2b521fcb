"""Resuming a run: the newest checkpoint that loads.

A resume whose newest checkpoint is damaged falls back to the newest step that loads, with a warning
(the damaged step is kept aside as `<step>.corrupt`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax

from jaxlm.checkpoint.metadata import CorruptCheckpoint
from jaxlm.checkpoint.run_checkpoints import RunCheckpoints
from jaxlm.errors import JaxlmError


def restore_newest(open_checkpoints: Callable[[], RunCheckpoints], directory: Path, steps: list[int], full_abs,
                   opt_abs, notes: list[str]):
    """(manager, restored state) of the newest step that loads. Damaged newer steps are then renamed to
    `<step>.corrupt` (kept for inspection, ignored by Orbax), each with a warning; when no step loads,
    nothing is renamed and the error names the newest."""
    checkpoints = open_checkpoints()
    failed: list[tuple[int, CorruptCheckpoint]] = []
    for step in reversed(steps):
        try:
            state = checkpoints.restore(step, full_abs, opt_abs)
        except CorruptCheckpoint as e:
            if jax.process_count() > 1:  # every process would have to agree on the fallback
                checkpoints.close()
                raise
            failed.append((step, e))
            continue
        for bad, e in failed:
            aside = directory / f"{bad}.corrupt"
            if jax.process_index() == 0:
                (directory / str(bad)).rename(aside)
            notes.append(f"warning: {e}; resumed from step {step} instead (the damaged step is kept as {aside})")
        if failed:
            checkpoints.manager.reload()
        return checkpoints, state
    checkpoints.close()
    raise JaxlmError(f"no checkpoint in {directory} loads ({len(failed)} tried; newest: {failed[0][1]}); restore "
                     f"them, or move {directory} away to start the run over")
