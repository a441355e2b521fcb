"""Lazy, resumable document readers: plain text, JSONL and Parquet files.

A reader walks the files of one source in a fixed order (shuffled per epoch from the seed) and
yields one document at a time; its position is four integers (epoch, file, offset, doc), so a
resumed reader starts at the exact next document without reading what came before. Only the
current document (or Parquet record batch) is ever in memory.

Bad input is either skipped and counted (`on_bad_record: skip`) or raised as a JaxlmError that
names the file and byte offset (`error`). Counters: empty_file, unreadable_file, non_utf8,
bad_json, missing_field.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data.config import SourceConfig
from jaxlm.errors import JaxlmError

_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}


def list_files(src: SourceConfig) -> list[Path]:
    """Every file of a source, sorted; JaxlmError if the path matches nothing."""
    text = str(src.path)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in glob.glob(str(resolve_path(text)), recursive=True)]
    else:
        root = resolve_path(text)
        if root.is_dir():
            files = []
            for d, dirs, names in os.walk(root):
                dirs[:] = [x for x in dirs if not x.startswith(".")]  # skip .git, .cache, ...
                files += [Path(d) / f for f in names if not f.startswith(".")]
        elif root.exists() or root.is_symlink():
            files = [root]
        else:
            raise JaxlmError(f"data source {src.label!r}: {src.path} does not exist; fix data.sources[].path")
    files = sorted(f for f in files if not f.is_dir())
    if not files:
        raise JaxlmError(f"data source {src.label!r}: no files match {src.path}")
    return files


def file_format(src: SourceConfig, path: Path) -> str:
    if src.format != "auto":
        return src.format
    suffix = path.suffix.lower()
    return "jsonl" if suffix in _JSONL else "parquet" if suffix in _PARQUET else "text"


def check_files(src: SourceConfig, files: list[Path]) -> None:
    """Fail at start (not mid-epoch) on empty or unreadable files when bad records are errors."""
    for f in files:
        try:
            with open(f, "rb") as fh:
                empty = not fh.read(1)
        except OSError as e:
            raise JaxlmError(f"data source {src.label!r}: cannot read {f} ({e.strerror}); fix it, remove it, or "
                             f"set data.on_bad_record: skip") from None
        if empty:
            raise JaxlmError(f"data source {src.label!r}: {f} is empty; remove it or set data.on_bad_record: skip")


class DocumentReader:
    """Documents of one source. `next_doc()` -> text, or None after the last file when not repeating."""

    def __init__(self, src: SourceConfig, files: list[Path], *, seed: int, source_index: int, shuffle: bool,
                 repeat: bool, on_bad_record: str, counters: Counter):
        self.src, self.files, self.seed, self.source_index = src, files, seed, source_index
        self.shuffle, self.repeat, self.strict = shuffle, repeat, on_bad_record == "error"
        self.counters = counters
        self.epoch = self.file = self.offset = self.doc = 0
        self._order = self._file_order(0)
        self._fh = None  # open handle (binary file or parquet batch iterator) for self._order[self.file]
        self._rows: list = []  # parquet: rows of the current record batch not yet returned

    # -- position ---------------------------------------------------------------------------------
    def get_state(self) -> dict:
        return {"epoch": self.epoch, "file": self.file, "offset": self.offset, "doc": self.doc}

    def set_state(self, state: dict) -> None:
        self._close()
        self.epoch, self.file, self.offset, self.doc = (int(state[k]) for k in ("epoch", "file", "offset", "doc"))
        self._order = self._file_order(self.epoch)

    def _file_order(self, epoch: int) -> list[Path]:
        if not self.shuffle:
            return list(self.files)
        perm = np.random.default_rng((self.seed, self.source_index, epoch)).permutation(len(self.files))
        return [self.files[i] for i in perm]

    # -- reading ----------------------------------------------------------------------------------
    def next_doc(self) -> str | None:
        docs_at_epoch_start = None
        while True:
            if self.file >= len(self._order):
                if not self.repeat:
                    return None
                if docs_at_epoch_start == self.doc == 0:  # went through every file, found nothing
                    raise JaxlmError(f"data source {self.src.label!r} has no readable documents in {self.src.path}")
                self.epoch, self.file, self.offset, self.doc = self.epoch + 1, 0, 0, 0
                self._order = self._file_order(self.epoch)
                docs_at_epoch_start = 0
                continue
            text = self._read_one()
            if text is not None:
                self.doc += 1
                return text
            self._close()
            self.file, self.offset = self.file + 1, 0

    def _read_one(self) -> str | None:
        """Next document of the current file, or None at its end (bad records skipped or raised)."""
        path = self._order[self.file]
        fmt = file_format(self.src, path)
        while True:
            if fmt == "parquet":
                return self._next_parquet(path)
            if self._fh is None:
                try:
                    self._fh = open(path, "rb")
                    if self.offset == 0 and os.fstat(self._fh.fileno()).st_size == 0:
                        self._bad("empty_file", f"{path} is empty")
                        return None
                    self._fh.seek(self.offset)
                except OSError as e:
                    self._bad("unreadable_file", f"cannot read {path} ({e.strerror})")
                    return None
            start = self.offset
            unit = "line" if fmt == "jsonl" else self.src.unit
            raw = self._read_unit(unit)
            if raw is None:
                return None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self._bad("non_utf8", f"{path} at byte {start + e.start} is not UTF-8 text")
                continue
            if fmt == "text":
                return text
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                self._bad("bad_json", f"{path} at byte {start}: line is not JSON ({e.msg})")
                continue
            value = record.get(self.src.text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                self._bad("missing_field", f"{path} at byte {start}: record has no string field "
                                           f"{self.src.text_field!r}")
                continue
            return value

    def _read_unit(self, unit: str) -> bytes | None:
        fh = self._fh
        if unit == "file":
            if self.offset > 0:
                return None
            data = fh.read()
            self.offset = fh.tell()
            if not data.strip():
                self._bad("empty_file", f"{self._order[self.file]} holds only white space")
                return None
            return data
        lines: list[bytes] = []
        while True:
            line = fh.readline()
            if not line:
                break
            if not line.strip():
                if unit == "line" or lines:
                    self.offset = fh.tell()
                    if lines:
                        break
                continue
            lines.append(line)
            if unit == "line":
                break
        self.offset = fh.tell()
        if not lines:
            return None
        return b"".join(lines).rstrip(b"\r\n")

    def _next_parquet(self, path: Path) -> str | None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while True:
            if self._fh is None:
                try:
                    pf = pq.ParquetFile(path)
                except (OSError, pa.ArrowException) as e:
                    self._bad("unreadable_file", f"cannot read {path} as Parquet ({str(e)[:120]})")
                    return None
                if self.src.text_field not in pf.schema_arrow.names:
                    self._bad("missing_field", f"{path} has no column {self.src.text_field!r} "
                                               f"(columns: {pf.schema_arrow.names})")
                    return None
                # Start at the row group holding row `offset`, then drop the rows before it.
                group, skip = 0, self.offset
                while group < pf.num_row_groups and skip >= pf.metadata.row_group(group).num_rows:
                    skip -= pf.metadata.row_group(group).num_rows
                    group += 1
                self._fh = pf.iter_batches(batch_size=1024, row_groups=list(range(group, pf.num_row_groups)),
                                           columns=[self.src.text_field])
                self._rows, self._skip = [], skip
            if not self._rows:
                batch = next(self._fh, None)
                if batch is None:
                    return None
                rows = batch.column(0).to_pylist()
                rows, self._skip = rows[self._skip:], max(0, self._skip - len(rows))
                self._rows = rows[::-1]  # pop() from the end
                continue
            value = self._rows.pop()
            self.offset += 1
            if isinstance(value, str):
                return value
            self._bad("missing_field", f"{path} row {self.offset - 1}: {self.src.text_field!r} is not a string")

    def _bad(self, kind: str, message: str) -> None:
        if self.strict:
            raise JaxlmError(f"data source {self.src.label!r}: {message}; fix the input or set "
                             f"data.on_bad_record: skip")
        self.counters[kind] += 1

    def _close(self) -> None:
        if self._fh is not None and hasattr(self._fh, "close"):
            self._fh.close()
        self._fh, self._rows = None, []
