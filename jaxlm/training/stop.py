"""Stopping a run on a signal, at one step on every process.

SIGTERM (a preemption notice) and SIGINT (Ctrl-C) ask the run to stop: it finishes the step in
flight, saves a checkpoint and returns, so rerunning the same command resumes there. A second
SIGINT aborts at once, without saving: the process exits 130. Orbax writes each checkpoint under a
temporary name and renames it when complete, so a save cut short is never taken for a finished step
(the next start deletes it).

With several processes a signal usually reaches only some of them, at different steps. Stopping
where each one sees it would leave one process in the save's collectives while another runs the
next step. So the processes agree: at every step each one starts a max over processes of the
signal it has seen (a tiny collective, dispatched like the step), and acts on the result of the
call LAG steps earlier, which has run by then. Every process reads the same values at the same
call, so all stop after the same step, at most LAG steps after the signal. The host does not wait
for the device beyond what the step loop already allows.
"""

from __future__ import annotations

import collections
import os
import signal
import sys

import jax

from jaxlm.parallel import distributed

LAG = 2  # steps between a signal's collective and the decision that reads it
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Install the handlers for the duration of a `with` block (the previous ones come back after)."""

    def __init__(self):
        self.seen = 0  # the first signal number this process received
        self.agreed = 0  # the signal number every process acts on (0: none)
        self._pending: collections.deque = collections.deque()
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker): signals keep their handlers
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.seen == signal.SIGINT:
            sys.stdout.flush()
            sys.stderr.write("jaxlm train: interrupted twice: stopped at once without saving; finished checkpoints "
                             "are kept, an unfinished save is discarded; rerun the same command to resume\n")
            sys.stderr.flush()
            os._exit(130)
        self.seen = self.seen or signum

    def should_stop(self) -> bool:
        """Called once per step on every process, in step: True when the run stops before the next step."""
        if jax.process_count() == 1:
            self.agreed = self.seen
        else:
            self._pending.append(distributed.max_over_processes_async(self.seen))
            if len(self._pending) > LAG:
                self.agreed = int(self._pending.popleft())
        return self.agreed != 0

    @property
    def reason(self) -> str:
        return signal.Signals(self.agreed).name if self.agreed else ""
