"""Filter and tokenize chunks of documents: in the calling thread, or in a pool of worker processes.

`Encoder(tokenizer, rules, workers)`: `submit(texts)` -> a handle whose `result()` is
`encode_chunk`'s (a drop reason per text, and the kept texts' ids with bos/eos). Chunks are
encoded with the tokenizer's batched `encode_batch` (sentencepiece's list `encode`, tiktoken's
`encode_ordinary_batch`, tokenizers' `encode_batch`). Results come back in submission order, and
each document's result depends on its text alone, so the batches are the same for any worker count.

Worker processes are started with "spawn" (forking a process that runs JAX's threads is unsafe),
once per (tokenizer, worker count) and shared by every iterator using that tokenizer; each receives
the tokenizer once, then only texts. They stop with the tokenizer, at interpreter exit, or by `shutdown()`
(the CLI calls it before it ends a failed command with os._exit, which skips atexit); a worker whose
parent died anyway (kill -9) exits by itself.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import os
import pickle
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from jaxlm.data import filters
from jaxlm.errors import JaxlmError
from jaxlm.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Rules:
    """What happens to a document after reading: the length filters, then bos/eos around its ids."""

    min_chars: int = 0
    min_tokens: int = 0
    add_bos: bool = True
    add_eos: bool = True


def encode_chunk(tok: Tokenizer, rules: Rules, texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(reasons, lengths, ids): reasons[i] is "" for a kept text, else "dropped_empty_document" /
    "dropped_too_few_chars" / "dropped_too_few_tokens"; the kept texts' ids (bos/eos included) are
    `ids` (int32) end to end, lengths[j] tokens for the j-th kept text. One array, not one per text:
    the chunk crosses a process boundary, and many small arrays cost more to send than their tokens."""
    reasons = [""] * len(texts)
    keep = []
    for i, text in enumerate(texts):
        if not text.strip():
            reasons[i] = "dropped_empty_document"
        elif filters.too_few_chars(text, rules.min_chars):
            reasons[i] = "dropped_too_few_chars"
        else:
            keep.append(i)
    batch = [texts[i] for i in keep]
    if hasattr(tok, "encode_batch"):
        encoded = tok.encode_batch(batch) if batch else []
    else:  # a duck-typed tokenizer with `encode` only
        encoded = [tok.encode(t) for t in batch]
    head = [tok.bos_id] if rules.add_bos else []
    tail = [tok.eos_id] if rules.add_eos else []
    flat: list[int] = []
    lengths = []
    for i, ids in zip(keep, encoded):
        if len(ids) < rules.min_tokens:
            reasons[i] = "dropped_too_few_tokens"
            continue
        flat += head
        flat += ids
        flat += tail
        lengths.append(len(head) + len(ids) + len(tail))
    return reasons, np.asarray(lengths, np.int64), np.asarray(flat, np.int32)


class _Done:
    """An already computed result, shaped like a Future."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value

    def cancel(self) -> bool:
        return False


class _Pending:
    """A chunk being encoded in a worker process."""

    def __init__(self, future, key):
        self._future, self._key = future, key

    def result(self):
        try:
            return self._future.result()
        except BrokenProcessPool:
            _POOLS.pop(self._key, None)
            raise JaxlmError("data.workers: a tokenizer worker process died; a script that starts them must keep its "
                             "code under `if __name__ == \"__main__\":` (workers are spawned and import it), or set "
                             "data.workers: 1") from None

    def cancel(self) -> bool:
        return self._future.cancel()


class Encoder:
    def __init__(self, tokenizer: Tokenizer, rules: Rules, workers: int = 1):
        # More processes than cores never tokenize faster, and each costs a Python process's memory (a huge
        # data.workers would exhaust the host): at most one per usable core. Batches do not depend on the count.
        workers = min(workers, max(2, usable_cores()))
        self.tok, self.rules, self.workers = tokenizer, rules, workers
        self._key = (id(tokenizer), workers)
        self._pool = _pool(tokenizer, workers) if workers > 1 else None

    @property
    def in_flight(self) -> int:
        """Chunks worth keeping submitted ahead of the one being consumed: enough to keep every worker busy."""
        return 2 * self.workers if self._pool is not None else 0

    def submit(self, texts: list[str]):
        if self._pool is None or not texts:
            return _Done(encode_chunk(self.tok, self.rules, texts))
        if _POOLS.get(self._key) is not self._pool:  # broken (and dropped) since: start a fresh one
            self._pool = _pool(self.tok, self.workers)
        return _Pending(self._pool.submit(_encode_in_worker, self.rules, texts), self._key)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- the worker processes --------------------------------------------------------------------------
_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}
_WORKER_TOKENIZER: Tokenizer | None = None  # set in each worker process by _init_worker


def _init_worker(tok_bytes: bytes) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = pickle.loads(tok_bytes)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A worker holds both ends of its task queue, so it never sees end-of-file when its parent dies.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _encode_in_worker(rules: Rules, texts: list[str]):
    return encode_chunk(_WORKER_TOKENIZER, rules, texts)


def _pool(tok: Tokenizer, workers: int) -> ProcessPoolExecutor:
    key = (id(tok), workers)
    if key not in _POOLS:
        # The pool keeps the tokenizer's bytes, not the tokenizer, so that the tokenizer can be collected and
        # its pool stopped with it (a later tokenizer may reuse the id: it must never get this pool).
        _POOLS[key] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(pickle.dumps(tok),))
        weakref.finalize(tok, _stop, key)
    return _POOLS[key]


def _stop(key: tuple[int, int]) -> None:
    pool = _POOLS.pop(key, None)
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


@atexit.register
def shutdown() -> None:
    """Stop every worker process (they are started again on demand)."""
    for key in list(_POOLS):
        _stop(key)


def wait_all(handles) -> None:
    """Cancel handles not started yet and wait for the running ones (so that none runs on unseen)."""
    running = [h for h in handles if not h.cancel()]
    for h in running:
        try:
            h.result()
        except Exception:  # noqa: BLE001  (a result nobody will read; its error would have been raised there)
            pass
