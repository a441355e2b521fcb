"""The scheduling step: who holds a decode slot, which tokens each step feeds, what each token ends.

Every request is a token sequence (prompt + generated) of which the first `computed` tokens have
their keys and values in the request's pages. A step:

  1. admits waiting requests, oldest first, while a slot is free and the free pages cover the new
     prompt (+ 1 token) after what earlier admitted prompts still need; an admitted request first
     takes the longest cached prefix of its prompt (full pages only, never the page holding the
     prompt's last token, which must be computed to give the first logits);
  2. decodes: every request with exactly one token left to feed (its last token) feeds it, in one
     program call over as many rows (bucketed to a power of two, at most `max_slots`): a step's cost
     follows the requests decoding, not the slots; each gets one new token;
  3. prefills: requests with more tokens left feed up to `prefill_chunk` of them each, oldest
     first, at most `prefill_budget` in all, in one call; a chunk that reaches the end of the
     sequence samples the request's first token, so it decodes from the next step on.

So a long prompt is spread over steps and never stalls the decoding rows for more than one chunk.

A request leaves at its stop token, stop string, max_tokens or cancel: its slot and pages are free
for the next admission in the same step. When a decoding request needs a page and none is free,
the youngest running request is preempted: its pages are released and it returns to the head of
the queue with its generated tokens, to be prefilled again (recompute, as vLLM does).

Multi-step decode (vLLM's multi-step scheduling): when a step has decode work only (no prompt left to
feed, and no waiting request a free slot could admit) and the pool holds the pages, the decode runs
up to `decode_steps` tokens per row in one program call (`step.run_block`), with the pages of those
tokens reserved first. The host then takes each row's tokens in order through the same `_accept`
as a single step (stop ids, stop strings, max_tokens), dropping those after the row's end, so a
request's output is exactly what single steps give. The price: a request that arrives (or a slot
that frees) during a block waits for the block to end, at most decode_steps - 1 steps longer, and
tokens reach the caller in bursts of up to decode_steps. decode_steps=1 turns it off.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time

from jaxlm.serving.pages import PagePool
from jaxlm.serving.requests import Completion, OnEvent, RequestHandle, RequestParams, TokenEvent
from jaxlm.serving.step import StepRunner, bucket
from jaxlm.serving.text import TextStream

log = logging.getLogger(__name__)
MIN_CHUNK_BUCKET = 16  # smallest compiled prefill width (tokens per row)
MIN_VIEW_TOKENS = 64  # smallest compiled decode attention view: rows attend over at least this many slots
MIN_PREFILL_VIEW_TOKENS = 2048  # the same for prefill chunks (a 2k context compiles one prefill view)


@dataclasses.dataclass(eq=False)
class Request:
    id: str
    prompt: list[int]
    params: RequestParams
    handle: RequestHandle
    on_event: OnEvent | None
    seed: int
    rope_length: int  # LongRoPE picks its factors from this (prompt + max_tokens): fixed for the request
    stops: frozenset[int]  # token ids that end it
    text: TextStream
    hashes: list[bytes]  # prefix hashes of the prompt's full pages
    seq: list[int] = dataclasses.field(default_factory=list)  # prompt + generated
    generated: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    pages: list[int] = dataclasses.field(default_factory=list)
    computed: int = 0  # tokens of seq whose keys and values are in pages
    published: int = 0  # leading pages offered to the prefix cache
    slot: int | None = None
    order: int = 0  # admission order (the youngest is preempted first)

    def __post_init__(self):
        self.seq = list(self.prompt)

    @property
    def left(self) -> int:
        return len(self.seq) - self.computed


class Scheduler:
    """Host state of the running engine; `step` is called under the engine's step lock."""

    def __init__(self, runner: StepRunner, pool: PagePool, *, max_slots: int, page_size: int, pages_per_row: int,
                 prefill_chunk: int, prefill_budget: int, decode_steps: int = 1):
        self.runner, self.pool = runner, pool
        self.decode_steps = decode_steps
        self.max_slots, self.page_size, self.pages_per_row = max_slots, page_size, pages_per_row
        self.prefill_chunk, self.prefill_budget = prefill_chunk, prefill_budget
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.free_slots = list(range(max_slots - 1, -1, -1))
        self.admitted = 0
        self.tokens_generated = 0
        self.finished = 0
        self.preemptions = 0
        self.steps = 0

    # ---- one step -------------------------------------------------------------------------------
    def step_admit(self) -> None:
        """Part 1 (under the engine's inbox lock: it takes requests off the queue)."""
        self.steps += 1
        self._admit()

    def step_run(self, events: list[TokenEvent]) -> None:
        """Parts 2 and 3: the device work."""
        self._decode(events)
        self._prefill(events)

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            r = self.waiting[0]
            reserved = sum(max(0, self.pages_for(len(o.seq) + 1) - len(o.pages)) for o in self.running if o.left > 1)
            if self.pool.available - reserved < self.pages_for(len(r.seq) + 1):
                return
            self.waiting.popleft()
            r.slot = self.free_slots.pop()
            r.order = self.admitted
            self.admitted += 1
            r.pages = self.pool.match(r.hashes[:(len(r.prompt) - 1) // self.page_size])
            r.computed, r.published = len(r.pages) * self.page_size, len(r.pages)
            self.running.append(r)

    def _decode(self, events: list[TokenEvent]) -> None:
        rows = [r for r in sorted(self.running, key=lambda r: r.order) if r.left == 1]
        rows = [r for r in rows if r in self.running and self._grow(r, len(r.seq))]
        if not rows:
            return
        steps = self._block_steps(rows)
        if steps > 1:
            self._decode_block(rows, steps, events)
            return
        pages = self._view_pages(max(len(r.pages) for r in rows), MIN_VIEW_TOKENS)
        batch = [self._row(r, r.seq[-1:], last=0) for r in rows]
        token, logprob = self.runner.run(batch, bucket(len(rows), 1, self.max_slots), 1, pages)
        now = time.perf_counter()
        for i, r in enumerate(rows):
            r.computed += 1
            self._accept(r, int(token[i]), float(logprob[i]), now, events)

    def _block_steps(self, rows: list[Request]) -> int:
        """Decode iterations this step may run in one call: 1 unless only decode work is in sight and the
        pool holds the pages of every row's next tokens (see the module docstring)."""
        if self.decode_steps <= 1 or any(r.left > 1 for r in self.running) or (self.waiting and self.free_slots):
            return 1
        steps = min(self.decode_steps, max(self._budget(r) for r in rows))
        need = sum(max(0, self.pages_for(r.computed + min(steps, self._budget(r))) - len(r.pages)) for r in rows)
        return steps if need <= self.pool.available else 1

    @staticmethod
    def _budget(r: Request) -> int:
        return r.params.max_tokens - len(r.generated)

    def _decode_block(self, rows: list[Request], steps: int, events: list[TokenEvent]) -> None:
        """Up to `steps` tokens per row in one call; the host takes them in order as single steps would."""
        batch = []
        for r in rows:
            budget = min(steps, self._budget(r))
            reserved = self._ensure_pages(r, r.computed + budget)
            assert reserved, "_block_steps checked the pool"
            batch.append({**self._row(r, r.seq[-1:], last=0), "budget": budget, "stops": sorted(r.stops)})
        pages = self._view_pages(max(len(r.pages) for r in rows), MIN_VIEW_TOKENS)
        stops = bucket(max(len(r.stops) for r in rows), 4, 1 << 30)
        token, logprob = self.runner.run_block(batch, bucket(len(rows), 1, self.max_slots), pages, self.decode_steps,
                                               steps, stops)
        now = time.perf_counter()
        for b, r in enumerate(rows):
            for i in range(min(steps, self._budget(r))):
                if r.handle.done:  # ended by an earlier token of the block: the rest are dropped
                    break
                r.computed += 1
                self._accept(r, int(token[b, i]), float(logprob[b, i]), now, events)

    def _prefill(self, events: list[TokenEvent]) -> None:
        budget, chunks = self.prefill_budget, []
        for r in sorted(self.running, key=lambda r: r.order):
            n = min(r.left, self.prefill_chunk, budget)
            if r.left <= 1 or n <= 0 or not self._ensure_pages(r, r.computed + n):
                continue
            chunks.append((r, n))
            budget -= n
        if not chunks:
            return
        rows = len(chunks)
        width = bucket(max(n for _, n in chunks), min(MIN_CHUNK_BUCKET, self.prefill_chunk), self.prefill_chunk)
        batch = [self._row(r, r.seq[r.computed:r.computed + n], last=n - 1) for r, n in chunks]
        pages = self._view_pages(max(len(r.pages) for r, _ in chunks), MIN_PREFILL_VIEW_TOKENS, factor=4)
        token, logprob = self.runner.run(batch, bucket(rows, 1, self.max_slots), width, pages)
        now = time.perf_counter()
        for i, (r, n) in enumerate(chunks):
            r.computed += n
            self._publish(r)
            if r.left == 0:
                self._accept(r, int(token[i]), float(logprob[i]), now, events)

    def program_shapes(self) -> list[tuple[int, int, int]]:
        """(rows, tokens per row, pages) of every program a step can call, over their buckets: decode
        (1 token), a decode block (-decode_steps) and the prefill chunks (`StepRunner.compile`)."""
        decode = sorted({self._view_pages(p, MIN_VIEW_TOKENS) for p in range(1, self.pages_per_row + 1)})
        prefill = sorted({self._view_pages(p, MIN_PREFILL_VIEW_TOKENS, 4) for p in range(1, self.pages_per_row + 1)})
        batches = sorted({bucket(n, 1, self.max_slots) for n in range(1, self.max_slots + 1)})
        out = [(b, 1, p) for b in batches for p in decode]
        out += [(b, -self.decode_steps, p) for b in batches for p in decode if self.decode_steps > 1]
        low = min(MIN_CHUNK_BUCKET, self.prefill_chunk)
        least_n: dict[int, int] = {}  # width bucket -> fewest tokens of the longest chunk that give it
        for n in range(self.prefill_chunk, 0, -1):
            least_n[bucket(n, low, self.prefill_chunk)] = n
        least_rows: dict[int, int] = {}
        for n in range(min(self.max_slots, self.prefill_budget), 0, -1):
            least_rows[bucket(n, 1, self.max_slots)] = n
        for rows, fewest in sorted(least_rows.items()):
            for width, n in sorted(least_n.items()):
                if n + fewest - 1 <= self.prefill_budget:  # the longest chunk plus one token for each other row
                    out += [(rows, width, p) for p in prefill]
        return out

    def _view_pages(self, pages: int, min_tokens: int, factor: int = 2) -> int:
        """Pages each row's attention view spans (a compiled shape): from min_tokens worth up to the
        context, growing by `factor`. Decode starts small and steps by 2 (its attention reads the view
        every token); prefill starts at MIN_PREFILL_VIEW_TOKENS and steps by 4 (fewer programs; gathering
        the view is small beside a chunk's matmuls)."""
        low = min(self.pages_per_row, max(1, min_tokens // self.page_size))
        return bucket(pages, low, self.pages_per_row, factor)

    def _row(self, r: Request, tokens: list[int], last: int) -> dict:
        p = r.params
        return {"tokens": tokens, "start": r.computed, "table": r.pages, "last": last, "seq_length": r.rope_length,
                "seed": r.seed, "counter": len(r.generated), "temperature": p.temperature, "top_k": p.top_k,
                "top_p": p.top_p}

    # ---- pages ----------------------------------------------------------------------------------
    def _ensure_pages(self, r: Request, tokens: int) -> bool:
        """Grow r's pages to hold its first `tokens` positions; False when the pool runs dry."""
        while len(r.pages) * self.page_size < tokens:
            page = self.pool.allocate()
            if page is None:
                return False
            r.pages.append(page)
        return True

    def _grow(self, r: Request, tokens: int) -> bool:
        """As _ensure_pages, preempting the youngest running requests (r itself last) to make room."""
        while not self._ensure_pages(r, tokens):
            victim = max(self.running, key=lambda o: o.order)
            self.preempt(victim)
            if victim is r:
                return False
        return True

    def _publish(self, r: Request) -> None:
        while r.published < len(r.hashes) and (r.published + 1) * self.page_size <= r.computed:
            self.pool.publish(r.hashes[r.published], r.pages[r.published])
            r.published += 1

    def preempt(self, r: Request) -> None:
        self._leave(r)
        r.pages, r.computed, r.published = [], 0, 0
        self.waiting.appendleft(r)
        self.preemptions += 1

    def _leave(self, r: Request) -> None:
        self.pool.release(r.pages)
        r.pages = []
        self.running.remove(r)
        self.free_slots.append(r.slot)
        r.slot = None

    # ---- tokens and endings ---------------------------------------------------------------------
    def _accept(self, r: Request, token: int, logprob: float, now: float, events: list[TokenEvent]) -> None:
        """A new token for r: an event, and the end of r when the token ends it."""
        if token in r.stops:
            self.finish(r, "stop", events, now)
            return
        r.generated.append(token)
        r.seq.append(token)
        r.logprobs.append(logprob)
        self.tokens_generated += 1
        delta, hit = r.text.push(token)
        reason = "stop" if hit else "length" if len(r.generated) >= r.params.max_tokens else None
        if reason == "length":
            delta += r.text.flush()
        self.emit(r, TokenEvent(r.id, token, delta, logprob if r.params.logprobs else None, reason, now), events)
        if reason is not None:
            self._close(r, reason)

    def finish(self, r: Request, reason: str, events: list[TokenEvent], now: float | None = None) -> None:
        """End r with a final event of its own (stop token, cancel, error), wherever it is."""
        text = r.text.flush() if reason == "stop" else ""
        now = time.perf_counter() if now is None else now
        self.emit(r, TokenEvent(r.id, None, text, None, reason, now), events)
        self._close(r, reason)

    def _close(self, r: Request, reason: str) -> None:
        if r in self.running:
            self._leave(r)
        elif r in self.waiting:
            self.waiting.remove(r)
        self.finished += 1
        r.handle._finish(Completion(r.id, r.text.text, list(r.generated),
                                    list(r.logprobs) if r.params.logprobs else None, reason, len(r.prompt),
                                    len(r.generated)))

    def emit(self, r: Request, event: TokenEvent, events: list[TokenEvent]) -> None:
        events.append(event)
        r.handle._put(event)
        if r.on_event is not None:
            try:
                r.on_event(event)
            except Exception:  # a caller's callback must not stop the engine; the handle still has the event
                log.exception("on_event of request %s raised", r.id)
