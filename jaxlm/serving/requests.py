"""What a caller hands the serving engine and gets back: request knobs, token events, completions.

`RequestParams` checks its fields when built (one rule per field, `jaxlm.inference.checks`), so a
bad request fails in the caller's thread with a one-line error naming the field. Events go to the
request's `RequestHandle` (a queue the caller may block on) and to its optional `on_event`
callback, both from the engine thread.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator

from jaxlm.errors import JaxlmError
from jaxlm.inference import checks

FINISH_REASONS = ("stop", "length", "cancelled", "error")


class QueueFull(JaxlmError):
    """The engine's waiting queue is at max_queue."""


class EngineClosed(JaxlmError):
    """The engine is shutting down and takes no new requests."""


@dataclasses.dataclass(frozen=True)
class RequestParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # None = derived from the engine's request counter
    stop: tuple[str, ...] = ()  # stop strings: generation ends when the text contains one; excluded from it
    stop_token_ids: tuple[int, ...] = ()  # ids that end the request, in addition to the model's eos
    logprobs: bool = False  # report the log-probability of each chosen token
    ignore_eos: bool = False

    def __post_init__(self):
        checks.integer("max_tokens", self.max_tokens, 1)
        checks.number("temperature", self.temperature, 0, note="0 = greedy")
        checks.number("top_p", self.top_p, 0, 1, low_open=True, note="1 = off")
        checks.integer("top_k", self.top_k, 0, 2 ** 31 - 1, note="0 = off")
        if self.seed is not None:
            checks.integer("seed", self.seed, 0, checks.SEED_MAX)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise checks.ArgumentTypeError(f"stop must be a list of non-empty strings, got {checks.shown(self.stop)}")
        ids = self.stop_token_ids
        if not isinstance(ids, (tuple, list)) or any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
            raise checks.ArgumentTypeError(f"stop_token_ids must be a list of token ids (ints), got "
                                           f"{checks.shown(ids)}")
        checks.flag("logprobs", self.logprobs)
        checks.flag("ignore_eos", self.ignore_eos)
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in ids))


@dataclasses.dataclass
class TokenEvent:
    """One per generated token, then one final event (token_id None) when the end is not a token's own."""

    request_id: str
    token_id: int | None
    text: str  # text delta to append; held back while it may be the start of a stop string
    logprob: float | None
    finish_reason: str | None  # None while running; then "stop" | "length" | "cancelled" | "error"
    time: float  # time.perf_counter() when the token was produced


@dataclasses.dataclass
class Completion:
    request_id: str
    text: str
    token_ids: list[int]  # generated ids; a stop token id is not included, a stop string's tokens are
    logprobs: list[float] | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass(frozen=True)
class EngineStats:
    running: int  # requests holding a decode slot (prefilling or decoding)
    waiting: int  # submitted, not yet admitted
    pages_in_use: int  # pages held by running requests
    pages_total: int  # pages requests can hold (the trash page not counted)
    pages_cached: int  # prefix-cache pages (held or idle); idle ones are reclaimed on demand
    prefix_cache_hits: int  # pages reused from the prefix cache
    prefix_cache_queries: int  # full prompt pages looked up
    tokens_generated_total: int
    requests_finished_total: int
    preemptions: int  # running requests sent back to the queue when pages ran out
    steps: int


class RequestHandle:
    """The caller's side of one request: its events as they come, and its completion."""

    def __init__(self, engine, request_id: str, prompt_tokens: int):
        self._engine = engine
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._events: queue.Queue[TokenEvent] = queue.Queue()
        self._done = threading.Event()
        self._completion: Completion | None = None

    def events(self, timeout: float | None = None) -> Iterator[TokenEvent]:
        """Yield events as the engine produces them; ends after the final one. timeout (seconds) bounds
        each wait: past it, TimeoutError."""
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"request {self.request_id}: no event within {timeout} s") from None
            yield event
            if event.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request ends; its Completion. TimeoutError past timeout seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish within {timeout} s")
        return self._completion

    def cancel(self) -> None:
        self._engine.cancel(self.request_id)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _put(self, event: TokenEvent) -> None:
        self._events.put(event)

    def _finish(self, completion: Completion) -> None:
        self._completion = completion
        self._done.set()


OnEvent = Callable[[TokenEvent], None]
