"""Which part of a source each process reads: whole files, or byte (Parquet: row) ranges of files.

With at least as many files as processes, process p of N reads files p, p + N, p + 2N, ... of the
sorted list, whole. With fewer, every file is cut into N ranges of equal size and process p reads
range p of each. A range [a, b) owns every record (a line, a paragraph, a JSONL line; a Parquet row)
that starts in it: a reader that starts at a > 0 first skips the rest of the record it landed in
(`align`), and it reads the last record that starts before b to its end, past b. So every record is
read by exactly one process, and a process opens only its own files and reads only its own ranges
(plus the end of its last record and the byte before its first).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxlm.data.config import SourceConfig
from jaxlm.errors import ConfigError

_WHITE = b" \t\r\n\x0b\x0c"  # what bytes.strip() removes: a line of only these is blank


@dataclasses.dataclass(frozen=True)
class Piece:
    """Part of one file: records starting in [start, end) (bytes; rows for Parquet; end None: to the end)."""

    path: Path
    start: int = 0
    end: int | None = None
    first: bool = True  # this process reports problems of the whole file (empty, unreadable): one count per file


def plan(src: SourceConfig, files: list[Path], fmt, process_index: int, process_count: int,
         need_records: bool) -> list[Piece]:
    """This process's pieces of `files`. fmt(path) -> "text" | "jsonl" | "parquet".

    need_records: fail when some process could get no record at all (training sources repeat forever,
    so a process with nothing to read would stop the run mid-epoch)."""
    p, n = process_index, process_count
    if len(files) >= n:
        return [Piece(f) for f in files[p::n]]
    if need_records and src.unit == "file" and any(fmt(f) == "text" for f in files):
        raise ConfigError(f"data source {src.label!r}: {len(files)} file(s) of whole-file documents cannot feed "
                          f"{n} processes (a file is one document); split it into >= {n} files or set unit: "
                          f"paragraph or line")
    return [Piece(f, size * p // n, size * (p + 1) // n, first=p == 0)
            for f in files for size in [_length(f, fmt(f))]]


def _length(path: Path, fmt: str) -> int:
    """Bytes of a file, or rows of a Parquet file (0 when unreadable: the reader reports it)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq  # lazy: pyarrow is needed only for Parquet sources

            return pq.ParquetFile(path).metadata.num_rows
        return os.stat(path).st_size
    except Exception:  # noqa: BLE001  (any unreadable file: the reader counts it or raises, with its reason)
        return 0


def align(fh, offset: int, unit: str) -> int:
    """The first record start at or after `offset` (> 0) in an open binary file; fh is left there.

    line / JSONL: the first line start. paragraph: the first line start that does not continue a
    paragraph begun before `offset` (a paragraph belongs to the range holding its first line)."""
    fh.seek(offset - 1)
    pos = offset - 1 + len(fh.readline())  # == offset when the byte before it ends a line
    if unit != "paragraph" or _previous_line_blank(fh, pos):
        fh.seek(pos)
        return pos
    fh.seek(pos)
    while True:  # inside a paragraph begun earlier: its reader reads it; go past the blank line closing it
        line = fh.readline()
        pos += len(line)
        if not line.strip():  # a blank line, or the end of the file
            return pos


def _previous_line_blank(fh, pos: int) -> bool:
    """Whether the line that ends just before `pos` (a line start > 0) holds only white space."""
    at = pos - 1  # its newline; look at the bytes before it, back to the newline before that
    while at > 0:
        lo = max(0, at - 4096)
        fh.seek(lo)
        chunk = fh.read(at - lo).rstrip(_WHITE.replace(b"\n", b""))
        if chunk:
            return chunk.endswith(b"\n")
        at = lo
    return True
