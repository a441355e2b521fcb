"""Lazy, resumable document readers: plain text, JSONL and Parquet files.

A reader walks its process's pieces of one source (whole files or byte ranges, jaxlm.data.shards) in
a fixed order (shuffled per epoch from the seed) and yields one document at a time; its position is
four integers (epoch, piece, offset, doc), so a resumed reader starts at the exact next document
without reading what came before. Only the current document (or Parquet record batch) is in memory.

Bad input is either skipped and counted (`on_bad_record: skip`) or raised as a JaxlmError that
names the file and byte offset (`error`). Counters (BAD_RECORDS): empty_file, unreadable_file,
non_utf8, bad_json, missing_field, and not_regular_file (FIFOs, sockets and devices in a source
folder, left out when listing it whatever on_bad_record says: they hold no documents).
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections import Counter
from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data import shards
from jaxlm.data.config import SourceConfig
from jaxlm.errors import JaxlmError

_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}
BAD_RECORDS = ("empty_file", "unreadable_file", "non_utf8", "bad_json", "missing_field", "not_regular_file")


def list_files(src: SourceConfig, skipped: Counter | None = None) -> list[Path]:
    """Every regular file of a source, sorted; JaxlmError if the path matches none.

    FIFOs, sockets and devices are never opened (a FIFO blocks the reader forever): they are left out
    and counted in `skipped["not_regular_file"]`. Symlinks are followed, except into a folder already
    being read (a loop). Names starting with "." are left out unless the pattern names them."""
    root = source_root(src)
    pattern = resolve_path(src.path).parts[len(root.parts):]
    if pattern or root.is_dir():
        found = list(_matches(root, pattern or ("**",), set()))
    elif _kind(root) == "special":
        raise JaxlmError(f"data source {src.label!r}: {src.path} is not a regular file (a FIFO, socket or device); "
                         f"fix data.sources[].path")
    elif root.exists() or root.is_symlink():
        found = [(root, _kind(root))]
    else:
        raise JaxlmError(f"data source {src.label!r}: {src.path} does not exist; fix data.sources[].path")
    files = sorted(f for f, kind in found if kind != "special")
    if skipped is not None and len(files) < len(found):
        skipped["not_regular_file"] += len(found) - len(files)
    if not files:
        what = "no files match" if not found else "only FIFOs, sockets or devices match"
        raise JaxlmError(f"data source {src.label!r}: {what} {src.path}")
    return files


def source_root(src: SourceConfig) -> Path:
    """The file or folder a source reads: its path, or a glob's folder before the first wildcard."""
    parts = resolve_path(src.path).parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    return Path(*parts[:fixed])


def _kind(path: Path) -> str:
    """"dir", "file", "special" (FIFO, socket, device) or "unreadable" (kept: the reader counts it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "unreadable"
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special"


def _matches(folder: Path, pattern: tuple[str, ...], visited: set):
    """(path, kind) of the non-folders under `folder` matching the path components `pattern`
    ("**": any number of folders), as glob matches them; each folder is read once per pattern."""
    key = (os.path.realpath(folder), pattern)
    if key in visited:  # reached again through a symlink: a loop, or a folder read already
        return
    visited.add(key)
    head, rest = pattern[0], pattern[1:]
    if head == "**" and rest:
        yield from _matches(folder, rest, visited)  # "**" matching no folder
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        if name.startswith(".") and not head.startswith("."):  # .git, .cache, editor files
            continue
        if head != "**" and not fnmatch.fnmatchcase(name, head):
            continue
        path, kind = folder / name, _kind(folder / name)
        if kind == "dir":
            if head == "**":
                yield from _matches(path, pattern, visited)
            elif rest:
                yield from _matches(path, rest, visited)
        elif not rest:
            yield path, kind


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return True  # unreadable: counted as such, not blamed on the format


def file_format(src: SourceConfig, path: Path) -> str:
    if src.format != "auto":
        return src.format
    suffix = path.suffix.lower()
    return "jsonl" if suffix in _JSONL else "parquet" if suffix in _PARQUET else "text"


def check_files(src: SourceConfig, files: list[Path]) -> None:
    """Fail at start (not mid-epoch) on empty or unreadable files when bad records are errors."""
    for f in dict.fromkeys(files):
        try:
            with open(f, "rb") as fh:
                empty = not fh.read(1)
        except OSError as e:
            raise JaxlmError(f"data source {src.label!r}: cannot read {f} ({e.strerror}); fix it, remove it, or "
                             f"set data.on_bad_record: skip") from None
        if empty:
            raise JaxlmError(f"data source {src.label!r}: {f} is empty; remove it or set data.on_bad_record: skip")


class DocumentReader:
    """Documents of one source for one process. `next_doc()` -> text, or None after the last piece when
    not repeating. `pieces`: what this process reads (shards.plan); `files` alone: all of them, whole."""

    def __init__(self, src: SourceConfig, files: list[Path], *, seed: int, source_index: int, shuffle: bool,
                 repeat: bool, on_bad_record: str, counters: Counter, pieces: list[shards.Piece] | None = None):
        self.src, self.seed, self.source_index = src, seed, source_index
        self.pieces = pieces if pieces is not None else [shards.Piece(f) for f in files]
        self.shuffle, self.repeat, self.strict = shuffle, repeat, on_bad_record == "error"
        self.counters = counters
        self.bad_records = 0  # bad records counted by this reader (tells a caller that `counters` changed)
        self.epoch = self.file = self.offset = self.doc = 0
        self._order = self._file_order(0)
        self._fh = None  # open handle (binary file or parquet batch iterator) for self._order[self.file]
        self._rows: list = []  # parquet: rows of the current record batch not yet returned
        self._at_file_start = False  # the next record is the file's first: tells a wrong `format` from a bad line

    # -- position ---------------------------------------------------------------------------------
    def get_state(self) -> dict:
        """`file` indexes this epoch's piece order; `offset` is a byte (Parquet: row) of that file,
        below the piece's start before it is opened."""
        return {"epoch": self.epoch, "file": self.file, "offset": self.offset, "doc": self.doc}

    def set_state(self, state: dict) -> None:
        self._close()
        self.epoch, self.file, self.offset, self.doc = (int(state[k]) for k in ("epoch", "file", "offset", "doc"))
        self._order = self._file_order(self.epoch)

    def _file_order(self, epoch: int) -> list[shards.Piece]:
        if not self.shuffle:
            return list(self.pieces)
        perm = np.random.default_rng((self.seed, self.source_index, epoch)).permutation(len(self.pieces))
        return [self.pieces[i] for i in perm]

    # -- reading ----------------------------------------------------------------------------------
    def next_doc(self) -> str | None:
        docs_at_epoch_start = None
        while True:
            if self.file >= len(self._order):
                if not self.repeat:
                    return None
                if docs_at_epoch_start == self.doc == 0:  # went through every piece, found nothing
                    raise JaxlmError(f"data source {self.src.label!r} has no readable documents in {self.src.path} "
                                     f"(in this process's {len(self.pieces)} file(s) or ranges)")
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
        """Next document of the current piece, or None at its end (bad records skipped or raised)."""
        piece = self._order[self.file]
        if self._fh is None:  # a new piece: its format, once (not per document)
            self._fmt = file_format(self.src, piece.path)
        path, fmt = piece.path, self._fmt
        unit = "line" if fmt == "jsonl" else self.src.unit
        while True:
            if fmt == "parquet":
                return self._next_parquet(piece)
            if self._fh is None and not self._open(piece, unit):
                return None
            start, first = self.offset, self._at_file_start
            raw = self._read_unit(unit, piece)
            if raw is None:
                return None
            self._at_file_start = False
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
                if first and not text.lstrip().startswith("{"):  # not a bad line: not JSONL at all
                    raise self._wrong_format(path, "a JSONL") from None
                self._bad("bad_json", f"{path} at byte {start}: line is not JSON ({e.msg})")
                continue
            value = record.get(self.src.text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                self._bad("missing_field", f"{path} at byte {start}: record has no string field "
                                           f"{self.src.text_field!r}")
                continue
            return value

    def _open(self, piece: shards.Piece, unit: str) -> bool:
        """Open the piece's file at self.offset (at its first record when starting it); False if unusable."""
        try:
            self._fh = open(piece.path, "rb")
            if os.fstat(self._fh.fileno()).st_size == 0:
                if piece.first:
                    self._bad("empty_file", f"{piece.path} is empty")
                return False
            if self.offset <= piece.start:
                self.offset = piece.start
                if piece.start > 0 and unit != "file":
                    self.offset = shards.align(self._fh, piece.start, unit)
            self._fh.seek(self.offset)
            self._at_file_start = self.offset == 0
        except OSError as e:
            if piece.first:
                self._bad("unreadable_file", f"cannot read {piece.path} ({e.strerror})")
            return False
        return True

    def _read_unit(self, unit: str, piece: shards.Piece) -> bytes | None:
        """The next record that starts before the piece's end, read to its own end; advances self.offset."""
        fh, end = self._fh, piece.end if piece.end is not None else float("inf")
        if unit == "file":
            if self.offset > 0 or piece.start > 0 or end <= 0:  # the record at byte 0 is the range's holding 0
                return None
            data = fh.read()
            self.offset = fh.tell()
            if not data.strip():
                self._bad("empty_file", f"{piece.path} holds only white space")
                return None
            return data
        lines: list[bytes] = []
        while True:
            if not lines and self.offset >= end:  # the next record starts in the next range
                return None
            line = fh.readline()
            if not line:
                break
            self.offset += len(line)
            if not line.strip():
                if lines:  # a blank line ends a paragraph
                    break
                continue
            lines.append(line)
            if unit == "line":
                break
        if not lines:
            return None
        return b"".join(lines).rstrip(b"\r\n")

    def _next_parquet(self, piece: shards.Piece) -> str | None:
        import pyarrow as pa  # lazy: pyarrow is needed only for Parquet sources
        import pyarrow.parquet as pq

        path = piece.path
        while True:
            if self._fh is None:
                try:
                    pf = pq.ParquetFile(path)
                except (OSError, pa.ArrowException) as e:
                    if piece.first and not _starts_with(path, b"PAR1"):  # not a damaged Parquet file: another kind
                        raise self._wrong_format(path, "a Parquet") from None
                    if piece.first:
                        self._bad("unreadable_file", f"cannot read {path} as Parquet ({str(e)[:120]})")
                    return None
                if self.src.text_field not in pf.schema_arrow.names:
                    if piece.first:
                        self._bad("missing_field", f"{path} has no column {self.src.text_field!r} "
                                                   f"(columns: {pf.schema_arrow.names})")
                    return None
                self.offset = max(self.offset, piece.start)
                end = pf.metadata.num_rows if piece.end is None else min(piece.end, pf.metadata.num_rows)
                # Read the row groups holding rows [offset, end), then drop the rows before `offset`.
                group, first_row, groups = 0, 0, []
                for g in range(pf.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    if first_row + n > self.offset and first_row < end:
                        if not groups:
                            group = first_row
                        groups.append(g)
                    first_row += n
                self._fh = (pf.iter_batches(batch_size=1024, row_groups=groups, columns=[self.src.text_field])
                            if groups else iter(()))
                self._rows, self._skip, self._end = [], self.offset - group, end
            if self.offset >= self._end:
                return None
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

    def _wrong_format(self, path: Path, kind: str) -> JaxlmError:
        how = (f"format: {self.src.format}" if self.src.format != "auto" else
               f"format: auto, from its {path.suffix} extension")
        return JaxlmError(f"data source {self.src.label!r}: {path} is not {kind} file ({how}); set "
                          f"data.sources[].format to the files' format (text, jsonl or parquet)")

    def _bad(self, kind: str, message: str) -> None:
        if self.strict:
            raise JaxlmError(f"data source {self.src.label!r}: {message}; fix the input or set "
                             f"data.on_bad_record: skip")
        self.counters[kind] += 1
        self.bad_records += 1

    def _close(self) -> None:
        if self._fh is not None and hasattr(self._fh, "close"):
            self._fh.close()
        self._fh, self._rows = None, []
