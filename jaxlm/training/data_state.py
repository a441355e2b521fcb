"""The training data as the loop reads it: the first batch read ahead, and the iterator's state.

The trainer reads one batch before anything is written (an unreadable corpus fails there), so the
loop's first step takes that batch instead of reading again. `PeekedBatches` keeps that in one place,
together with the state a checkpoint records: the iterator's position after the last batch the loop
took. On resume the saved state is put back (`reconcile`), three ways, by what the checkpoint holds.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxlm.errors import JaxlmError
from jaxlm.training.step import BATCH_KEYS


class PeekedBatches:
    """A batch iterator (next / get_state / set_state) whose first batch is read at construction."""

    def __init__(self, batches):
        self.batches = batches
        self.start_state = batches.get_state()
        self.peeked = read_batch(batches)

    def next_global(self, sharding) -> dict:
        """The next batch as global arrays: each process's local rows, placed with `sharding`."""
        local, self.peeked = (self.peeked, None) if self.peeked is not None else (read_batch(self.batches), None)
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in BATCH_KEYS}

    def state(self):
        """The position after the last batch the loop took (a checkpoint's data_state)."""
        return self.start_state if self.peeked is not None else self.batches.get_state()

    def restore(self, state) -> None:
        self.peeked = None
        self.batches.set_state(state)

    @property
    def skipped_files(self) -> int:
        """data.sources entries that are not regular files (FIFOs would block the reader), skipped."""
        return getattr(self.batches, "stats", dict)().get("not_regular_file", 0)

    def close(self) -> None:
        if hasattr(self.batches, "close"):
            self.batches.close()


def reconcile(batches: PeekedBatches, saved: list, process_index: int, process_count: int) -> list[str]:
    """Continue the data where the checkpoint's processes left it; returns notes for the log."""
    if len(saved) == process_count:
        batches.restore(saved[process_index])
    elif getattr(batches.batches, "global_state", False):  # prepared rows: one stream for any number of processes
        batches.restore(saved[0])
    else:  # the job's process count changed: the data order cannot continue exactly
        batches.restore(batches.start_state)
        return [f"checkpoint written by {len(saved)} processes, now {process_count}: data restarts from the "
                f"beginning of the corpus"]
    return []


def read_batch(batches):
    try:
        return next(batches)
    except StopIteration:
        raise JaxlmError("the data iterator ran out of batches; add text to the corpus or lower train.steps") from None
