"""The resumable units of a curate run, and the fingerprint of the corpus they come from.

A part is one piece of one source for one process: a whole file, or a byte (Parquet: row) range of a
file when a source has fewer files than processes (the same split `jaxlm.data.shards` gives training).
Process p of N scores only its own parts. A finished part is one Parquet file, written under a
temporary name and renamed, so a part is either complete or absent: a rerun after a kill skips the
parts that exist and scores the rest (`DIR/parts/nN/`, one folder per process count; the signatures
go to a .sig.npy renamed into place before the Parquet file).

Documents are keyed by (source, file, offset): `offset` is the byte (Parquet: row) just past the
document, where the reader stands after it; it does not depend on how the file was split.

The fingerprint covers each source's label and, per file, its path relative to the source, its size
and a hash of its first and last 64 KiB: attributes scored from another corpus are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from jaxlm.data import shards
from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.sources import DocumentReader, file_format, list_files, source_root
from jaxlm.outputs import output_path


@dataclasses.dataclass(frozen=True)
class Part:
    source_index: int
    source: SourceConfig
    files: tuple[Path, ...]  # the source's sorted files (file_index indexes them)
    piece: shards.Piece

    @property
    def name(self) -> str:
        f = self.files.index(self.piece.path)
        end = "end" if self.piece.end is None else self.piece.end
        return f"s{self.source_index:03d}-f{f:06d}-{self.piece.start}-{end}"


def plan(data: DataConfig, process_index: int, process_count: int) -> list[Part]:
    """This process's parts of every data.sources source, in source and file order."""
    out = []
    for si, src in enumerate(data.sources):
        files = list_files(src)
        pieces = shards.plan(src, files, lambda f, s=src: file_format(s, f), process_index, process_count,
                             need_records=False)
        out += [Part(si, src, tuple(files), piece) for piece in pieces]
    return out


def read_documents(part: Part, on_bad_record: str, counters: Counter):
    """(file index, offset, text) of every document of a part, in file order."""
    reader = DocumentReader(part.source, list(part.files), seed=0, source_index=part.source_index, shuffle=False,
                            repeat=False, on_bad_record=on_bad_record, counters=counters, pieces=[part.piece])
    file_index = part.files.index(part.piece.path)
    while (text := reader.next_doc()) is not None:
        yield file_index, reader.get_state()["offset"], text


def fingerprint(data: DataConfig) -> str:
    h = hashlib.sha256()
    for src in data.sources:
        root = source_root(src)
        h.update(json.dumps(src.label).encode())
        for f in list_files(src):
            size = os.stat(f).st_size
            with open(f, "rb") as fh:
                head = fh.read(65536)
                fh.seek(max(0, size - 65536))
                tail = fh.read(65536)
            rel = str(f.relative_to(root)) if f != root else f.name
            h.update(json.dumps([rel, size]).encode() + hashlib.blake2b(head + tail, digest_size=16).digest())
    return h.hexdigest()[:24]


def part_dir(out: Path, process_count: int) -> Path:
    return out / "parts" / f"n{process_count}"


def write_part(folder: Path, part: Part, table, signatures: np.ndarray | None) -> None:
    import pyarrow.parquet as pq  # lazy: pyarrow loads in a second

    folder.mkdir(parents=True, exist_ok=True)
    if signatures is not None:
        with output_path(folder / f"{part.name}.sig.npy", overwrite=True, folder=False) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, signatures)
    with output_path(folder / f"{part.name}.parquet", overwrite=True, folder=False) as tmp:
        pq.write_table(table, tmp)


def done(folder: Path, part: Part) -> bool:
    return (folder / f"{part.name}.parquet").is_file()
