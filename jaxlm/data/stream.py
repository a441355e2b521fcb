"""One source as a stream of rows: read -> filter + tokenize -> pack -> window-shuffle.

Documents are read in order by this process's reader (its own files or byte ranges of the source,
jaxlm.data.shards), checked for exact duplicates (jaxlm.data.dedup, bounded memory), and sent in
chunks to the encoder (jaxlm.data.workers: the length filters and batched tokenization, in this
thread or in worker processes), which hands results back in order; packing takes them in that order.
Reading runs a few chunks ahead of packing, so every document carries the reader position and
bad-record counts from just before it was read.

State (all small integers and counters, no tokens):
    anchor   where the current shuffle window began: the reader position and counters taken just
             before the document that was being packed, and the token offset inside it
    window   index of the current window;  taken: rows of it already handed out
Restoring re-reads at most one document and rebuilds one window (`shuffle_window` rows), so the
rows that follow are exactly those an uninterrupted stream would give. With dedup, the hashes of
the documents read earlier in the epoch are rebuilt by re-reading (not tokenizing) them.
"""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

from jaxlm.data import filters, packing, shards, sources, workers
from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.dedup import SeenHashes
from jaxlm.data.sources import BAD_RECORDS, DocumentReader
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.tokenizer import Tokenizer

CHUNK_DOCS, CHUNK_CHARS = 2048, 1 << 16  # a chunk ends at whichever comes first


class _Chunk:
    """Documents read together. states[k] / bads[k]: reader position and bad-record counts just before
    document k (index len(epochs): after the last one); the encoder's handle gives the non-duplicates' results."""

    def __init__(self):
        self.states: list[dict] = []
        self.bads: list[dict] = []
        self.epochs: list[int] = []
        self.duplicate: list[bool] = []
        self.handle = None
        self.results: list | None = None
        self.error: JaxlmError | None = None  # raised when the consumer reaches it, not earlier
        self.last = False  # the reader ran out (a non-repeating source) after these documents

    def result(self, k: int) -> tuple[str, np.ndarray | None]:
        """(drop reason, None) or ("", int32 ids) of document k."""
        if self.results is None:
            reasons, lengths, ids = self.handle.result()
            reasons, ends, at = iter(reasons), iter(np.cumsum(lengths).tolist()), 0
            self.results = []
            for dup in self.duplicate:
                reason = "dropped_duplicate" if dup else next(reasons)
                if reason:
                    self.results.append((reason, None))
                else:
                    end = next(ends)
                    self.results.append(("", ids[at:end]))
                    at = end
        return self.results[k]


class SourceStream:
    def __init__(self, src: SourceConfig, pieces: list[shards.Piece], encoder: workers.Encoder, *,
                 source_index: int, seq_len: int, mode: str, dedup_capacity: int, seed: int, shuffle: bool,
                 shuffle_window: int, repeat: bool, on_bad_record: str, skipped: Counter | None = None):
        """dedup_capacity: hashes the duplicate memory keeps (0: no dedup). skipped: files left out when
        listing the source (sources.list_files), counted with the reader's bad records."""
        self.src, self.encoder, self.tok, self.seq_len, self.mode = src, encoder, encoder.tok, seq_len, mode
        self.seed, self.source_index, self.shuffle = seed, source_index, shuffle
        self.window_size = shuffle_window if shuffle else 1
        self._reader_args = dict(seed=seed, source_index=source_index, shuffle=shuffle, repeat=repeat,
                                 on_bad_record=on_bad_record, pieces=pieces)
        self.reader = DocumentReader(src, [], counters=Counter(skipped or {}), **self._reader_args)
        self._counts: Counter = Counter()  # documents, tokens, dropped_*, truncated_tokens (bad records: reader)
        self._seen = SeenHashes(dedup_capacity) if dedup_capacity else None
        self._seen_epoch = 0
        self._kept_epoch = 0
        self._chunks: deque[_Chunk] = deque()  # read and submitted, not yet taken
        self._chunk, self._k = None, 0  # the chunk being taken from, and its next document
        self._doc: np.ndarray | None = None  # the document being packed
        self._doc_snap: tuple[dict, dict] | None = None  # (reader state, bad-record counts) just before reading it
        self._off = 0
        self._window: list | None = None
        self._window_index = 0
        self._taken = 0
        self._anchor = self._pack_state()

    @property
    def counters(self) -> dict[str, int]:
        """Counts up to the last document taken: kept documents and tokens, every drop, bad records."""
        return {**self._position()[1], **self._counts}

    # -- documents --------------------------------------------------------------------------------
    def _read_chunk(self) -> _Chunk:
        """Read documents up to a chunk's size, check them for duplicates, submit the rest for encoding."""
        chunk, reader, texts, chars = _Chunk(), self.reader, [], 0
        bads, bad_total = dict(reader.counters), reader.bad_records
        while True:
            if reader.bad_records != bad_total:  # copied only when it changed: most documents share one dict
                bads, bad_total = dict(reader.counters), reader.bad_records
            chunk.states.append(reader.get_state())
            chunk.bads.append(bads)
            if len(chunk.epochs) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
                break
            try:
                text = reader.next_doc()
            except JaxlmError as e:
                chunk.error = e
                break
            if text is None:
                chunk.states[-1], chunk.bads[-1] = reader.get_state(), dict(reader.counters)
                chunk.last = True
                break
            duplicate = False
            if self._seen is not None:
                if reader.epoch != self._seen_epoch:
                    self._seen.clear()
                    self._seen_epoch = reader.epoch
                duplicate = self._seen.add(filters.doc_hash(text))
            chunk.epochs.append(reader.epoch)
            chunk.duplicate.append(duplicate)
            if not duplicate:
                texts.append(text)
                chars += len(text)
        chunk.handle = self.encoder.submit(texts)
        return chunk

    def _position(self) -> tuple[dict, dict]:
        """(reader state, bad-record counts) just before the next document to take."""
        if self._chunk is not None:
            return self._chunk.states[self._k], self._chunk.bads[self._k]
        return self.reader.get_state(), dict(self.reader.counters)

    def _next_doc(self) -> tuple[np.ndarray | None, tuple[dict, dict]]:
        """The next kept document's ids and the (reader state, bad-record counts) from just before it was read.
        The other counters from just then are the current ones less this document (`_pack_state`)."""
        while True:
            chunk, k = self._chunk, self._k
            if chunk is not None and k < len(chunk.epochs):
                snap = (chunk.states[k], chunk.bads[k])
                reason, doc = chunk.result(k)
                self._k += 1
                if chunk.epochs[k] - self._kept_epoch >= 2:
                    raise JaxlmError(f"data source {self.src.label!r}: a whole epoch passed with every document "
                                     f"dropped ({self.counters}); loosen data.filters or fix the source")
                if reason:
                    self._counts[reason] += 1
                    continue
                self._counts["documents"] += 1
                self._counts["tokens"] += len(doc)
                self._kept_epoch = chunk.epochs[k]
                return doc, snap
            if chunk is not None and chunk.error is not None:
                raise chunk.error
            if chunk is not None and chunk.last:
                return None, (chunk.states[-1], chunk.bads[-1])
            while len(self._chunks) <= self.encoder.in_flight and not (
                    self._chunks and (self._chunks[-1].last or self._chunks[-1].error)):
                self._chunks.append(self._read_chunk())
            self._chunk, self._k = self._chunks.popleft(), 0

    def _drop_chunks(self) -> None:
        """Forget what was read ahead (waiting for encodings already running)."""
        chunks = list(self._chunks) + ([self._chunk] if self._chunk is not None else [])
        workers.wait_all([c.handle for c in chunks])
        self._chunks.clear()
        self._chunk, self._k = None, 0

    def close(self) -> None:
        self._drop_chunks()

    # -- rows -------------------------------------------------------------------------------------
    def _make_row(self) -> dict[str, np.ndarray] | None:
        pad = self.tok.pad_id
        if self.mode == "pad":
            doc, _ = self._next_doc()
            if doc is None:
                return None
            row, lost = packing.padded_row(doc, self.seq_len, pad)
            self._counts["truncated_tokens"] += lost
            return row
        pieces, at = [], 0
        while at < self.seq_len:
            if self._doc is None:
                doc, snap = self._next_doc()
                if doc is None:
                    break
                self._doc, self._doc_snap, self._off = doc, snap, 0
            n = min(self.seq_len - at, len(self._doc) - self._off)
            pieces.append((self._doc, self._off, n))
            at, self._off = at + n, self._off + n
            if self._off == len(self._doc):
                self._doc = None
        return packing.packed_row(pieces, self.seq_len, pad) if at else None

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
            reader_state, bads = self._doc_snap
            before = Counter(self._counts)  # the document being packed is the last one counted: take it out
            before.subtract({"documents": 1, "tokens": len(self._doc)})
            counts = {k: v for k, v in before.items() if v or k not in ("documents", "tokens")}
            return {"reader": dict(reader_state), "counters": {**bads, **counts}, "offset": self._off}
        return {"reader": dict(self._position()[0]), "counters": self.counters, "offset": 0}

    def _restore_pack(self, state: dict) -> None:
        self._drop_chunks()
        self.reader.set_state(state["reader"])
        counts = {k: int(v) for k, v in state["counters"].items()}
        self.reader.counters.clear()
        self.reader.counters.update({k: v for k, v in counts.items() if k in BAD_RECORDS})
        self._counts = Counter({k: v for k, v in counts.items() if k not in BAD_RECORDS})
        self._kept_epoch = self.reader.epoch
        if self._seen is not None:
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
        scan = DocumentReader(self.src, [], counters=Counter(), **self._reader_args)
        scan.set_state({"epoch": target["epoch"], "file": 0, "offset": 0, "doc": 0})
        self._seen.clear()
        self._seen_epoch = target["epoch"]
        while scan.doc < target["doc"]:
            text = scan.next_doc()
            if text is None:
                break
            self._seen.add(filters.doc_hash(text))

    def get_state(self) -> dict:
        """`counters` (documents read so far, up to the current window) is for reporting; resume uses the rest."""
        live = self.counters
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
    """One stream per source of `srcs` (this process's share of it): training (shuffled, repeating) or
    one pass in file order."""
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is outside [0, {process_count})")
    min_chars, min_tokens, dedup = cfg.filters.resolved()
    encoder = workers.Encoder(tokenizer, workers.Rules(min_chars, min_tokens, cfg.add_bos, cfg.add_eos), cfg.workers)
    out = []
    for i, src in enumerate(srcs):
        skipped = Counter()
        files = sources.list_files(src, skipped)
        pieces = shards.plan(src, files, lambda f, src=src: sources.file_format(src, f), process_index,
                             process_count, need_records=train)
        if cfg.on_bad_record == "error":
            sources.check_files(src, [p.path for p in pieces])
        out.append(SourceStream(
            src, pieces, encoder, source_index=i, seq_len=seq_len, mode=cfg.mode,
            dedup_capacity=cfg.filters.dedup_capacity if dedup else 0, seed=seed, shuffle=cfg.shuffle and train,
            shuffle_window=cfg.shuffle_window, repeat=train, on_bad_record=cfg.on_bad_record,
            skipped=skipped if process_index == 0 else None))  # counted once, not once per process
    return out
