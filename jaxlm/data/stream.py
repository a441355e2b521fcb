"""One source as a stream of rows: read -> filter -> tokenize -> pack -> window-shuffle.

State (all small integers and counters, no tokens):
    anchor   where the current shuffle window began: the reader position and counters taken just
             before the document that was being packed, and the token offset inside it
    window   index of the current window;  taken: rows of it already handed out
Restoring re-reads at most one document and rebuilds one window (`shuffle_window` rows), so the
rows that follow are exactly those an uninterrupted stream would give.

With N processes, document i of an epoch belongs to process i % N. Every process reads every
document (reading is cheap; tokenizing is the cost) so that duplicate detection is global.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from jaxlm.data import filters, packing, sources
from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.sources import DocumentReader
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.tokenizer import Tokenizer


class SourceStream:
    def __init__(self, src: SourceConfig, files: list[Path], tokenizer: Tokenizer, *, source_index: int,
                 seq_len: int, mode: str, add_bos: bool, add_eos: bool, min_chars: int, min_tokens: int,
                 dedup: bool, seed: int, shuffle: bool, shuffle_window: int, repeat: bool, on_bad_record: str,
                 process_index: int = 0, process_count: int = 1):
        self.src, self.tok, self.seq_len, self.mode = src, tokenizer, seq_len, mode
        self.add_bos, self.add_eos = add_bos, add_eos
        self.min_chars, self.min_tokens, self.dedup = min_chars, min_tokens, dedup
        self.seed, self.source_index, self.shuffle = seed, source_index, shuffle
        self.window_size = shuffle_window if shuffle else 1
        self.process_index, self.process_count = process_index, process_count
        self.counters: Counter = Counter()
        # Bad records are counted by process 0 only, so per-process counts add up to the corpus total.
        reader_args = dict(seed=seed, source_index=source_index, shuffle=shuffle, repeat=repeat,
                           on_bad_record=on_bad_record)
        self._reader_args, self._files = reader_args, files
        self.reader = DocumentReader(src, files, counters=self.counters if process_index == 0 else Counter(),
                                     **reader_args)
        self._seen: set[int] = set()
        self._seen_epoch = 0
        self._kept_epoch = 0
        self._doc: np.ndarray | None = None  # the document being packed
        self._doc_snap: tuple[dict, dict] | None = None  # (reader state, counters) just before reading it
        self._off = 0
        self._window: list | None = None
        self._window_index = 0
        self._taken = 0
        self._anchor = self._pack_state()

    # -- documents --------------------------------------------------------------------------------
    def _next_doc(self) -> tuple[np.ndarray | None, tuple[dict, dict]]:
        reader, c = self.reader, self.counters
        while True:
            snap = (reader.get_state(), dict(c))
            text = reader.next_doc()
            if text is None:
                return None, snap
            if reader.epoch - self._kept_epoch >= 2:
                raise JaxlmError(f"data source {self.src.label!r}: a whole epoch passed with every document "
                                 f"dropped ({dict(c)}); loosen data.filters or fix the source")
            index = reader.doc - 1
            duplicate = False
            if self.dedup:
                if reader.epoch != self._seen_epoch:
                    self._seen, self._seen_epoch = set(), reader.epoch
                h = filters.doc_hash(text)
                duplicate = h in self._seen
                self._seen.add(h)
            if index % self.process_count != self.process_index:
                continue
            if duplicate:
                c["dropped_duplicate"] += 1
                continue
            if not text.strip():
                c["dropped_empty_document"] += 1
                continue
            if filters.too_few_chars(text, self.min_chars):
                c["dropped_too_few_chars"] += 1
                continue
            ids = self.tok.encode(text)
            if len(ids) < self.min_tokens:
                c["dropped_too_few_tokens"] += 1
                continue
            doc = np.asarray(([self.tok.bos_id] if self.add_bos else []) + ids +
                             ([self.tok.eos_id] if self.add_eos else []), np.int32)
            c["documents"] += 1
            c["tokens"] += len(doc)
            self._kept_epoch = reader.epoch
            return doc, snap

    # -- rows -------------------------------------------------------------------------------------
    def _make_row(self) -> dict[str, np.ndarray] | None:
        pad = self.tok.pad_id
        if self.mode == "pad":
            doc, _ = self._next_doc()
            if doc is None:
                return None
            row, lost = packing.padded_row(doc, self.seq_len, pad)
            self.counters["truncated_tokens"] += lost
            return row
        row, at, segment = packing.empty_row(self.seq_len, pad), 0, 0
        while at < self.seq_len:
            if self._doc is None:
                doc, snap = self._next_doc()
                if doc is None:
                    break
                self._doc, self._doc_snap, self._off = doc, snap, 0
            n = min(self.seq_len - at, len(self._doc) - self._off)
            segment += 1
            packing.place(row, at, self._doc, self._off, n, segment)
            at, self._off = at + n, self._off + n
            if self._off == len(self._doc):
                self._doc = None
        return row if at else None

    def _fill_window(self) -> None:
        self._anchor = self._pack_state()
        rows = []
        while len(rows) < self.window_size:
            row = self._make_row()
            if row is None:
                break
            rows.append(row)
        if self.window_size > 1:
            perm = np.random.default_rng((self.seed, self.source_index, 7, self._window_index)).permutation(len(rows))
            rows = [rows[i] for i in perm]
        self._window, self._taken = rows, 0

    def next_row(self) -> dict[str, np.ndarray] | None:
        """The next row, or None when a non-repeating source is used up."""
        if self._window is None or self._taken >= len(self._window):
            if self._window is not None:
                if not self._window:
                    return None
                self._window_index += 1
            self._fill_window()
            if not self._window:
                return None
        row = self._window[self._taken]
        self._taken += 1
        return row

    # -- state ------------------------------------------------------------------------------------
    def _pack_state(self) -> dict:
        if self._doc is not None:
            reader_state, counters = self._doc_snap
            return {"reader": dict(reader_state), "counters": dict(counters), "offset": self._off}
        return {"reader": self.reader.get_state(), "counters": dict(self.counters), "offset": 0}

    def _restore_pack(self, state: dict) -> None:
        self.reader.set_state(state["reader"])
        self.counters.clear()
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
        self._kept_epoch = self.reader.epoch
        if self.dedup:
            self._rebuild_seen()
        self._doc = None
        if state["offset"]:
            doc, snap = self._next_doc()
            if doc is None or state["offset"] >= len(doc):
                raise JaxlmError(f"data state does not match source {self.src.label!r} (its files changed?); "
                                 f"restart the data stream without the saved state")
            self._doc, self._doc_snap, self._off = doc, snap, int(state["offset"])

    def _rebuild_seen(self) -> None:
        """Hashes of the documents read earlier in this epoch: re-read (not tokenized) from the epoch start."""
        target = self.reader.get_state()
        scan = DocumentReader(self.src, self._files, counters=Counter(), **self._reader_args)
        scan.set_state({"epoch": target["epoch"], "file": 0, "offset": 0, "doc": 0})
        self._seen, self._seen_epoch = set(), target["epoch"]
        while scan.doc < target["doc"]:
            text = scan.next_doc()
            if text is None:
                break
            self._seen.add(filters.doc_hash(text))

    def get_state(self) -> dict:
        """`counters` (documents read so far, up to the current window) is for reporting; resume uses the rest."""
        live = dict(self.counters)
        if self._window is None:
            return {"anchor": self._pack_state(), "window": self._window_index, "taken": 0, "counters": live}
        return {"anchor": self._anchor, "window": self._window_index, "taken": self._taken, "counters": live}

    def set_state(self, state: dict) -> None:
        self._restore_pack(state["anchor"])
        self._window_index, self._window = int(state["window"]), None
        if state["taken"]:
            self._fill_window()
            self._taken = int(state["taken"])


def make_streams(cfg: DataConfig, srcs: tuple[SourceConfig, ...], tokenizer: Tokenizer, *, seq_len: int, seed: int,
                 train: bool, process_index: int, process_count: int) -> list[SourceStream]:
    """One stream per source of `srcs`: training (shuffled, repeating) or one pass in file order."""
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is outside [0, {process_count})")
    min_chars, min_tokens, dedup = cfg.filters.resolved()
    out = []
    for i, src in enumerate(srcs):
        files = sources.list_files(src)
        if cfg.on_bad_record == "error":
            sources.check_files(src, files)
        out.append(SourceStream(
            src, files, tokenizer, source_index=i, seq_len=seq_len, mode=cfg.mode, add_bos=cfg.add_bos,
            add_eos=cfg.add_eos, min_chars=min_chars, min_tokens=min_tokens, dedup=dedup, seed=seed,
            shuffle=cfg.shuffle and train, shuffle_window=cfg.shuffle_window, repeat=train,
            on_bad_record=cfg.on_bad_record, process_index=process_index, process_count=process_count))
    return out
