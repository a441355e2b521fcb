"""The continuous-batching serving engine: requests join and leave a running batch step by step.

    engine = ServingEngine(lm, max_slots=8)          # lm = jaxlm.load(path)
    handle = engine.submit(prompt_ids, RequestParams(max_tokens=64, temperature=0.7))
    engine.start()                                   # a background thread steps while there is work
    for event in handle.events(): print(event.text, end="")

Memory is a pool of fixed-size KV pages (`jaxlm.model.paged_kv` on the device, `pages.PagePool` on
the host): a request holds the pages its tokens fill, so memory follows the tokens in flight, not
slots x context. The default pool is what a static batch of max_slots rows of the full context
would hold. Scheduling (admission, chunked prefill, decode, preemption) is `scheduler.Scheduler`;
this module is the thread-safe front: checks, the queue, cancellation, the thread and shutdown.
When only decode work is in sight, a step runs up to `decode_steps` tokens per row in one compiled
call (multi-step decode, `scheduler`); `warmup()` compiles every bucketed step program ahead of time.

LongRoPE (Phi-3 128k): a request whose prompt + max_tokens exceeds original_max_position runs with
the long factors from its first token; others use the short ones throughout. So a request's tokens
never depend on a switch mid-way (the static engine rebuilds the cache when a row crosses; the two
agree on requests that stay below the switch). The prefix cache keeps the two kinds apart.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence

import jax
from flax import nnx

from jaxlm.errors import memory_limit
from jaxlm.inference import checks
from jaxlm.inference.engine import CACHE_DTYPES
from jaxlm.model import paged_kv
from jaxlm.model.layouts import to_unrolled
from jaxlm.serving.pages import PagePool, prefix_hashes
from jaxlm.serving.requests import (
    Completion,
    EngineClosed,
    EngineStats,
    QueueFull,
    RequestHandle,
    RequestParams,
    TokenEvent,
)
from jaxlm.serving.scheduler import Request, Scheduler
from jaxlm.serving.step import StepRunner
from jaxlm.serving.text import TextStream

__all__ = ["Completion", "EngineClosed", "EngineStats", "QueueFull", "RequestHandle", "RequestParams",
           "ServingEngine", "TokenEvent"]


class ServingEngine:
    """Continuous batching over a paged KV cache for one `LanguageModel` (see the module docstring)."""

    def __init__(self, lm, *, max_slots: int = 8, max_context: int | None = None, page_size: int = 16,
                 num_pages: int | None = None, prefill_chunk: int = 128, prefix_cache: bool = True,
                 max_queue: int = 256, cache_dtype: str = "auto", prefill_budget: int | None = None,
                 layers: str = "unroll", decode_steps: int = 8):
        """prefill_budget: prompt tokens fed per step over all requests (default 2 x prefill_chunk).
        layers: "unroll" (one group per layer) or "scan" (the stacked groups of lm's engine). Unrolled, a
        layer's pages are their own buffer, updated in place; scanned, `lax.scan` writes the whole pool to
        a new buffer every step (compiled for TPU: one extra pool in temporaries). lm.engine on a CPU is
        already unrolled (shared, no copy); a scanned one is unrolled here (a copy of the weights)."""
        engine = getattr(lm, "engine", None)
        if engine is None or not hasattr(lm, "tokenizer"):
            raise checks.ArgumentTypeError(f"lm must be a jaxlm LanguageModel (jaxlm.load(path)), got "
                                           f"{checks.shown(lm)}")
        checks.choice("layers", layers, ("unroll", "scan"), "layers layout")
        model = nnx.merge(engine.graphdef, engine.state)
        model = to_unrolled(model) if layers == "unroll" else model
        cfg = model.cfg
        self.lm, self.tokenizer, self.cfg = lm, lm.tokenizer, cfg
        self.max_slots = checks.integer("max_slots", max_slots, 1)
        self.max_context = checks.integer("max_context", cfg.max_context if max_context is None else max_context, 1,
                                          cfg.max_context, note="the model's context at most")
        self.page_size = checks.integer("page_size", page_size, 1)
        self.pages_per_row = -(-self.max_context // self.page_size)
        self.num_pages = checks.integer("num_pages", self.max_slots * self.pages_per_row if num_pages is None
                                        else num_pages, 1)
        self.prefill_chunk = checks.integer("prefill_chunk", prefill_chunk, 1)
        budget = checks.integer("prefill_budget", 2 * prefill_chunk if prefill_budget is None else prefill_budget, 1)
        self.max_queue = checks.integer("max_queue", max_queue, 1)
        self.decode_steps = checks.integer("decode_steps", decode_steps, 1)
        checks.flag("prefix_cache", prefix_cache)
        checks.choice("cache_dtype", cache_dtype, CACHE_DTYPES, "cache dtype")
        self.cache_dtype = engine.cache_dtype if cache_dtype == "auto" else cache_dtype
        self._check_memory()
        pools = paged_kv.init_pages(cfg, self.num_pages + 1, self.page_size, self.cache_dtype)
        self._runner = StepRunner(*nnx.split(model), pools, engine.vocab_limit)
        self._sched = Scheduler(self._runner, PagePool(self.num_pages, prefix_cache), max_slots=self.max_slots,
                                page_size=self.page_size, pages_per_row=self.pages_per_row,
                                prefill_chunk=self.prefill_chunk, prefill_budget=budget,
                                decode_steps=self.decode_steps)
        eos = self.tokenizer.eos_id
        self.eos_id = eos if eos >= 0 else cfg.eos_token_id
        rs = cfg.rope_scaling
        self._long_after = rs.original_max_position if rs.type == "longrope" else None
        self._lock = threading.Condition()  # guards the inbox (queue, cancels, active ids)
        self._step_lock = threading.Lock()  # one step at a time
        self._cancels: set[str] = set()
        self._active: dict[str, Request] = {}
        self._ids = itertools.count()
        self._closed = self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: Exception | None = None  # what the last failed step raised (its requests ended "error")

    # ---- requests -------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: RequestParams = RequestParams(),
               request_id: str | None = None, on_event: Callable[[TokenEvent], None] | None = None) -> RequestHandle:
        """Queue a request (thread-safe). QueueFull when max_queue requests wait; ArgumentValueError /
        ArgumentTypeError (one line naming the field) for a bad request."""
        prompt = self._check_request(prompt_ids, params, request_id, on_event)
        with self._lock:
            if self._closed:
                raise EngineClosed("the serving engine is shutting down; send the request to a running engine")
            if len(self._sched.waiting) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later or raise "
                                f"max_queue")
            number = next(self._ids)
            request_id = f"req-{number}" if request_id is None else request_id
            if request_id in self._active:
                raise checks.ArgumentValueError(f"request_id {request_id!r} is already running or waiting; give "
                                                f"each request its own id")
            r = self._request(prompt, params, request_id, on_event, number)
            self._active[request_id] = r
            self._sched.waiting.append(r)
            self._lock.notify_all()
        return r.handle

    def _request(self, prompt: list[int], params: RequestParams, request_id: str, on_event, number: int) -> Request:
        rope_length = len(prompt) + params.max_tokens
        long = self._long_after is not None and rope_length > self._long_after
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else {self.eos_id})
        return Request(id=request_id, prompt=prompt, params=params, handle=RequestHandle(self, request_id, len(prompt)),
                       on_event=on_event, seed=(number * 0x9E3779B1) % 2 ** 32 if params.seed is None else params.seed,
                       rope_length=rope_length, stops=frozenset(stops),
                       text=TextStream(self.tokenizer, prompt, params.stop),
                       hashes=prefix_hashes(prompt, self.page_size, len(prompt) // self.page_size,
                                            b"long" if long else b""))

    def _check_request(self, prompt_ids, params, request_id, on_event) -> list[int]:
        vocab = self.cfg.vocab_size
        prompt = checks.token_ids("prompt_ids", prompt_ids, vocab)
        if not prompt:
            raise checks.ArgumentValueError("prompt_ids is empty; give at least one token (e.g. the BOS token)")
        if not isinstance(params, RequestParams):
            raise checks.ArgumentTypeError(f"params must be a RequestParams, got {checks.shown(params)}")
        checks.token_ids("stop_token_ids", list(params.stop_token_ids), vocab)
        if request_id is not None and not isinstance(request_id, str):
            raise checks.ArgumentTypeError(f"request_id must be a str or None, got {checks.shown(request_id)}")
        checks.callback("on_event", on_event)
        total = len(prompt) + params.max_tokens
        if total > self.max_context:
            raise checks.ArgumentValueError(
                f"max_tokens {params.max_tokens} + prompt of {len(prompt)} tokens = {total}, over the context of "
                f"{self.max_context}; shorten the prompt or lower max_tokens")
        if self._sched.pages_for(total) > self.num_pages:
            raise checks.ArgumentValueError(
                f"max_tokens {params.max_tokens} + prompt of {len(prompt)} tokens needs "
                f"{self._sched.pages_for(total)} pages, more than the engine's {self.num_pages}; lower max_tokens "
                f"or raise num_pages")
        return prompt

    def cancel(self, request_id: str) -> None:
        """End a request (waiting or running): its slot and pages are free after the next step; its final
        event has finish_reason "cancelled". Unknown or finished ids are ignored."""
        with self._lock:
            if request_id in self._active:
                self._cancels.add(request_id)
                self._lock.notify_all()

    # ---- stepping -------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """One scheduling step (cancellations, admissions, one decode token per running request, prefill
        chunks); returns the events it produced."""
        events: list[TokenEvent] = []
        with self._step_lock:
            with self._lock:  # the inbox: a request leaves the queue only here, under both locks
                for request_id in self._cancels:
                    r = self._active.get(request_id)
                    if r is not None and not r.handle.done:  # it may have ended in the step that saw the cancel
                        self._sched.finish(r, "cancelled", events)
                self._cancels.clear()
                self._sched.step_admit()
            self._sched.step_run(events)
            with self._lock:
                for event in events:
                    if event.finish_reason is not None:
                        self._active.pop(event.request_id, None)
                self._lock.notify_all()
        return events

    def warmup(self, sampled: bool = True) -> int:
        """Compile every step program this engine's scheduler can call (its bucketed shapes; nothing is
        run), so no request pays a compile; returns how many there are. sampled=False leaves out the
        programs of steps with a sampled row (half of them; an all-greedy load never calls them). Call
        it before `start`: a step waits for it."""
        shapes = self._sched.program_shapes()
        with self._step_lock:
            for greedy_only in (True, False) if sampled else (True,):
                for batch, width, pages in shapes:
                    self._runner.compile(batch, width, pages, greedy_only)
        return len(shapes) * (2 if sampled else 1)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._active or self._cancels)

    def generate(self, prompts: Sequence[Sequence[int]], params: RequestParams | Sequence[RequestParams]
                 = RequestParams()) -> list[Completion]:
        """Submit every prompt and run until all are done (stepping here unless the thread runs)."""
        params = [params] * len(prompts) if isinstance(params, RequestParams) else list(params)
        if len(params) != len(prompts):
            raise checks.ArgumentValueError(f"params has {len(params)} entries for {len(prompts)} prompts; give one "
                                            f"RequestParams, or one per prompt")
        handles = []
        for prompt, p in zip(prompts, params):
            while True:
                try:
                    handles.append(self.submit(prompt, p))
                    break
                except QueueFull:
                    self._wait_or_step()
        while not all(h.done for h in handles):
            self._wait_or_step()
        return [h.result() for h in handles]

    def _wait_or_step(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            with self._lock:
                self._lock.wait(0.05)
        else:
            self.step()

    # ---- the thread -----------------------------------------------------------------------------
    def start(self) -> None:
        """Step in a background thread while there is work (it sleeps on a condition otherwise)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="jaxlm-serving", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._active or self._cancels) and not self._stopping:
                    self._lock.wait()
                if self._stopping and not (self._active or self._cancels):
                    return
            try:
                self.step()
            except Exception as err:  # a failed step ends what ran with "error"; the engine keeps serving
                self._fail(err)

    def _fail(self, err: Exception) -> None:
        self.last_error = err  # before the requests end: a caller woken by their end sees it
        events: list[TokenEvent] = []
        with self._step_lock, self._lock:
            for r in list(self._active.values()):
                self._sched.finish(r, "error", events)
            self._active.clear()
            self._cancels.clear()
            self._runner.pools = paged_kv.init_pages(self.cfg, self.num_pages + 1, self.page_size, self.cache_dtype)
            self._lock.notify_all()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests; let running and waiting ones finish for up to timeout_s seconds, cancel
        the rest, and join the thread."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._closed = True
        threaded = self._thread is not None and self._thread.is_alive()
        while self.has_work() and time.monotonic() < deadline:
            self._wait_or_step()
        with self._lock:
            self._cancels.update(self._active)
            self._stopping = True
            self._lock.notify_all()
        if threaded:
            self._thread.join()
        while self.has_work():
            self.step()

    # ---- state ----------------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        with self._lock:
            s, pool = self._sched, self._sched.pool
            return EngineStats(running=len(s.running), waiting=len(s.waiting), pages_in_use=pool.in_use,
                               pages_total=pool.num_pages, pages_cached=pool.cached, prefix_cache_hits=pool.hits,
                               prefix_cache_queries=pool.queries, tokens_generated_total=s.tokens_generated,
                               requests_finished_total=s.finished, preemptions=s.preemptions, steps=s.steps)

    @property
    def compiled_shapes(self) -> set[tuple]:
        """(rows, tokens, pages, greedy_only) of every step program run so far."""
        return set(self._runner.shapes)

    def _check_memory(self) -> None:
        """Refuse a page pool that cannot fit the device (CPU: this host's RAM) next to nothing else."""
        need = (self.num_pages + 1) * paged_kv.page_bytes(self.cfg, self.page_size, self.cache_dtype)
        device = jax.local_devices()[0]
        have = memory_limit(device)
        if have and need > have:
            raise checks.ArgumentValueError(
                f"num_pages {self.num_pages} of {self.page_size} tokens need {need / 2 ** 30:.1f} GiB of KV cache, "
                f"more than the {have / 2 ** 30:.1f} GiB of {device.device_kind}; lower num_pages or max_slots")
