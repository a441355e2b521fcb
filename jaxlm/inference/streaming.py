"""The host side of streaming: the decode loop's ordered io_callback calls `Sinks.emit` once per step.

The compiled decode programs are shared by every Engine over models of the same architecture (they are
keyed on the graphdef), so the callback compiled into them cannot be one Engine's method. It is this
registry's `emit`, given the id of the Python callable a generate call registered for its duration.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import numpy as np

# on_token(step, tokens (B,) np.int32, done (B,) np.bool_) -> True to stop early.
TokenCallback = Callable[[int, np.ndarray, np.ndarray], "bool | None"]


class Sinks:
    """Callables by id; thread-safe, so engines in several threads can stream at once."""

    def __init__(self):
        self._callbacks: dict[int, TokenCallback] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def register(self, on_token: TokenCallback) -> int:
        with self._lock:
            sink_id = next(self._ids)
            self._callbacks[sink_id] = on_token
        return sink_id

    def unregister(self, sink_id: int) -> None:
        with self._lock:
            self._callbacks.pop(sink_id, None)

    def emit(self, sink_id, step, tokens, done) -> np.bool_:
        """Forward one step to the registered callable; its truthy answer stops the loop."""
        stop = self._callbacks[int(sink_id)](int(step), np.asarray(tokens), np.asarray(done))
        return np.bool_(bool(stop))


SINKS = Sinks()  # the one the compiled programs call (see the module docstring)
