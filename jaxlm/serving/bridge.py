"""From the engine's thread to the server's event loop: one HTTP request's engine requests as one
async stream of (choice index, TokenEvent).

The engine calls `on_event` from its own thread; the callback hands each event to the asyncio loop
with `call_soon_threadsafe` (never blocking the engine) and records the latency metrics there, on
the engine's own timestamps. An HTTP request with n choices (or several prompts) is several engine
requests; they are submitted together, and if the queue fills part way the ones already submitted are
cancelled before the 429. Closing the stream early (the client went away, the server is stopping)
cancels every engine request still running: the engine frees their slots and pages within one step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from jaxlm.serving.protocol import ApiError
from jaxlm.serving.requests import EngineClosed, QueueFull


class RequestRun:
    """The engine requests behind one HTTP request; iterate `events()`, then read `results()`."""

    def __init__(self, engine, metrics, loop: asyncio.AbstractEventLoop, arrival: float):
        self.engine, self.metrics, self.loop, self.arrival = engine, metrics, loop, arrival
        self.id = uuid.uuid4().hex[:24]
        self.queue: asyncio.Queue = asyncio.Queue()
        self.handles: list = []
        self.open: set[int] = set()

    def submit(self, prompts: list[list[int]], params: list) -> None:
        """Submit choice i = (prompts[i], params[i]); QueueFull becomes a 429, after cancelling the rest."""
        try:
            for index, (ids, p) in enumerate(zip(prompts, params)):
                handle = self.engine.submit(ids, p, request_id=f"{self.id}-{index}",
                                            on_event=self._callback(index))
                self.handles.append(handle)
                self.open.add(index)
        except QueueFull as e:
            self.cancel()
            raise ApiError(429, f"the server is busy: {e}; retry later", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        except EngineClosed:
            self.cancel()
            raise ApiError(503, "the server is shutting down; retry on another replica", kind="server_error",
                           code="shutting_down") from None
        except BaseException:
            self.cancel()
            raise

    def _callback(self, index: int):
        previous: list[float | None] = [None]

        def on_event(event) -> None:
            if event.token_id is not None:
                self.metrics.token(event.time, previous[0], self.arrival)
                previous[0] = event.time
            if event.finish_reason is not None and event.finish_reason != "cancelled":
                self.metrics.latency.observe(max(0.0, event.time - self.arrival))
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:  # the loop is closed: the server has stopped and nobody is listening
                pass

        return on_event

    async def events(self, disconnected=None, poll_s: float = 0.5) -> AsyncIterator[tuple[int, object]]:
        """(choice index, TokenEvent) until every choice has its final event. `disconnected`: an async
        predicate polled while waiting (non-streaming requests: the client went away -> cancel)."""
        while self.open:
            try:
                index, event = await asyncio.wait_for(self.queue.get(), poll_s)
            except asyncio.TimeoutError:
                if disconnected is not None and await disconnected():
                    self.cancel()
                    return
                continue
            if event.finish_reason is not None:
                self.open.discard(index)
            yield index, event

    def results(self, timeout_s: float = 5.0) -> list:
        """Each choice's Completion (after events() ended: the engine has them)."""
        return [h.result(timeout=timeout_s) for h in self.handles]

    def cancel(self) -> None:
        """Cancel every engine request still running (idempotent)."""
        for index, handle in enumerate(self.handles):
            if index in self.open:
                self.engine.cancel(handle.request_id)

    @property
    def created(self) -> int:
        return int(time.time())
