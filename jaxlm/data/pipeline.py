"""Batches for training and evaluation: `make_batch_iterator` and `make_eval_iterator`.

Training: every row of a batch comes from one source, picked by a deterministic weighted
interleave (the source furthest below its share so far), so the mixture weights hold to within
one row at every step; the phase in force at batch `step` (0-based) gives the weights, and a phase
change restarts the shares. Sources repeat forever, reshuffled every epoch.
Evaluation: each validation source read once, in order, no shuffling; the last batch is padded with
empty rows (loss_mask 0).

The batch loop is a Grain `DatasetIterator`, prefetched in a background thread by Grain's
`ThreadPrefetchDatasetIterator`, which hands back the state that belongs to the last batch the
caller took (not the last one prepared).
"""

from __future__ import annotations

import atexit
import copy
import weakref
from typing import Any

import grain
import numpy as np
from grain.experimental import ThreadPrefetchDatasetIterator

from jaxlm.data import mixture, packing
from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.prepared import PreparedBatches
from jaxlm.data.stream import SourceStream, make_streams
from jaxlm.errors import ConfigError, JaxlmError, host_ram_bytes
from jaxlm.tokenizer import Tokenizer

STATE_VERSION = 2  # 2: reader positions index this process's pieces (jaxlm.data.shards); 1 = the same on 1 process
_LIVE: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_live() -> None:
    # Stop prefetch threads while the interpreter is still whole (Grain's __del__ fails at shutdown).
    for it in list(_LIVE):
        it.close()


def check_host_memory(cfg: DataConfig, sources: int, seq_len: int, batch_size: int, shuffled: bool) -> None:
    """Refuse, before anything is read, a pipeline whose rows in memory cannot fit the host: each source's
    shuffle window (data.shuffle_window rows) and the batches being built and prefetched (data.prefetch).
    Nothing would fail early otherwise: the windows of a repeating source fill by reading epoch after epoch."""
    row_bytes = seq_len * sum(a.itemsize for a in packing.empty_row(1, 0).values())
    windows = cfg.shuffle_window * sources if shuffled else 0
    need = (windows + batch_size * (cfg.prefetch + 2)) * row_bytes
    ram = host_ram_bytes()
    if need > ram // 2:
        raise ConfigError(f"the data pipeline would hold {need / 2 ** 30:,.1f} GiB of rows (data.shuffle_window "
                          f"{cfg.shuffle_window} rows x {sources} source(s), batches of {batch_size} x {seq_len} "
                          f"with data.prefetch {cfg.prefetch}), more than half of this host's {ram / 2 ** 30:.1f} "
                          f"GiB of RAM; lower data.shuffle_window, the batch size or data.prefetch")


class _Batches(grain.DatasetIterator):
    """The batch loop (no prefetching). Training: weighted interleave, infinite. Eval: concatenation, finite."""

    def __init__(self, streams: list[SourceStream], batch_size: int, seq_len: int, pad_id: int,
                 phases: list[tuple[int, list[float]]] | None, num_batches: int | None = None, process_count: int = 1):
        super().__init__()
        self.streams, self.batch_size, self.seq_len, self.pad_id = streams, batch_size, seq_len, pad_id
        self.process_count = process_count
        self.phases, self.num_batches = phases, num_batches
        self.step, self.phase, self.counts, self.current = 0, 0, [0] * len(streams), 0

    def _pick(self) -> int:
        """Source of the next row (jaxlm.data.mixture)."""
        k, self.phase, self.counts = mixture.pick(self.phases, self.step, self.phase, self.counts)
        return k

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_batches is not None and self.step >= self.num_batches:
            raise StopIteration
        rows = []
        for _ in range(self.batch_size):
            if self.phases is not None:
                k = self._pick()
                row = self.streams[k].next_row()
                if row is None:  # cannot happen for repeating sources
                    raise JaxlmError(f"data source {self.streams[k].src.label!r} ran dry")
            else:
                row = None
                while row is None and self.current < len(self.streams):
                    row = self.streams[self.current].next_row()
                    if row is None:
                        self.current += 1
                if row is None:
                    if not rows and self.num_batches is None:
                        raise StopIteration
                    row = packing.empty_row(self.seq_len, self.pad_id)
            rows.append(row)
        self.step += 1
        return {f: np.stack([r[f] for r in rows]) for f in packing.FIELDS}

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "step": self.step, "phase": self.phase, "counts": list(self.counts),
                "current": self.current, "streams": [s.get_state() for s in self.streams]}

    def set_state(self, state: dict[str, Any]) -> None:
        version = state.get("version")
        known = version == STATE_VERSION or (version == 1 and self.process_count == 1)
        if not known or len(state.get("streams", ())) != len(self.streams):
            raise JaxlmError("saved data state does not match this data config (sources changed?); "
                             "resume with the same data section or start the data stream afresh")
        self.step, self.phase, self.current = int(state["step"]), int(state["phase"]), int(state["current"])
        self.counts = [int(c) for c in state["counts"]]
        for stream, s in zip(self.streams, state["streams"]):
            stream.set_state(s)


class BatchIterator:
    """Iterator of batch dicts, each array (batch_size, seq_len): inputs/targets/segment_ids/positions
    int32, loss_mask float32. `get_state()` is a small JSON-able dict; `set_state` resumes exactly."""

    def __init__(self, batches: _Batches, prefetch: int):
        self._batches = batches
        self._it = ThreadPrefetchDatasetIterator(batches, prefetch) if prefetch > 0 else batches
        _LIVE.add(self)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        if not hasattr(self._it, "get_state"):  # closed
            return copy.deepcopy(self._final_state)
        return copy.deepcopy(self._it.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        if not hasattr(self._it, "set_state"):
            raise JaxlmError("this data iterator is closed; make a new one to resume from a state")
        self._it.set_state(copy.deepcopy(state))

    def stats(self) -> dict[str, int]:
        """Counters summed over sources (documents, tokens, dropped_*, bad records), counting every
        document read up to the last batch taken, its shuffle window included."""
        total: dict[str, int] = {}
        for s in self.get_state()["streams"]:
            for k, v in s["counters"].items():
                total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        """Stop the prefetch thread; the iterator is finished afterwards."""
        if not hasattr(self._it, "get_state"):
            return
        self._final_state = self.get_state()
        it, self._it = self._it, iter(())
        if isinstance(it, ThreadPrefetchDatasetIterator):
            it.close()
        del it  # collected now, while the interpreter is whole
        for stream in self._batches.streams:  # no encoding left running in worker processes
            stream.close()


def make_batch_iterator(data_cfg: DataConfig, tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """Endless training batches for this process (batch_size rows per process) from data_cfg.sources, or
    from the rows `jaxlm data prepare` wrote to data_cfg.prepared (jaxlm.data.prepared)."""
    if data_cfg.prepared:
        return PreparedBatches(data_cfg, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=seed,
                               process_index=process_index, process_count=process_count)
    check_host_memory(data_cfg, len(data_cfg.sources), seq_len, batch_size, shuffled=data_cfg.shuffle)
    streams = make_streams(data_cfg, data_cfg.sources, tokenizer, seq_len=seq_len, seed=seed, train=True,
                       process_index=process_index, process_count=process_count)
    return BatchIterator(_Batches(streams, batch_size, seq_len, tokenizer.pad_id, data_cfg.phase_weights(),
                                  process_count=process_count), data_cfg.prefetch)


def make_eval_iterator(data_cfg: DataConfig, tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                       process_index: int = 0, process_count: int = 1, num_batches: int | None = None,
                       sources_: tuple[SourceConfig, ...] | None = None) -> BatchIterator:
    """One pass over data_cfg.validation (or `sources_`), in order; a fresh pass per call.

    `num_batches`: stop after exactly that many batches, padding with empty rows once the data runs
    out (so every process of a multi-process job runs the same number of eval steps).
    """
    srcs = sources_ if sources_ is not None else data_cfg.validation
    if not srcs:
        raise ConfigError("data.validation is empty; add a held-out source (e.g. path: bundled:corpus/valid)")
    check_host_memory(data_cfg, len(srcs), seq_len, batch_size, shuffled=False)
    streams = make_streams(data_cfg, srcs, tokenizer, seq_len=seq_len, seed=0, train=False,
                       process_index=process_index, process_count=process_count)
    return BatchIterator(_Batches(streams, batch_size, seq_len, tokenizer.pad_id, None, num_batches,
                                  process_count), data_cfg.prefetch)
