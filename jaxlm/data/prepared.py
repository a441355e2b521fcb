"""Pre-tokenized, packed shards: `jaxlm data prepare` writes them once, training reads them.

Layout of DIR (written under a temporary name, then renamed):
    prepared.json            seq_len, tokenizer (kind, vocab size, a fingerprint), and per source its
                             label and number of rows
    <i>/<field>.bin          source i's rows, one raw array per packing field (packing.FIELDS), each
                             (rows, seq_len), int32 (loss_mask float32), row-major

Rows are fixed-size, so row r of a source is at byte r * seq_len * 4 of each file: the reader maps
the files (`np.memmap`) and touches only the rows it takes. Why raw arrays and not ArrayRecord
(Grain's native format): every record has the same size, so an index is an offset, random access
needs no index file, and numpy reads it with no extra dependency.

Reading (`PreparedBatches`): the global batch stream is defined once for all processes. Row j of
global batch b comes from the source the mixture's weighted interleave picks (the same rule as the
on-the-fly pipeline: the source furthest below its share), and within that source from its c-th
row in a per-epoch permutation seeded by (seed, source, epoch). Process p reads rows
[p * B, (p + 1) * B) of each global batch (B = rows per process), so together the processes read
each global batch exactly once, and each reads only its own rows. The state is the batch index,
the interleave's counts and the rows taken per source: resuming costs nothing and reads no earlier
row, on any number of processes. One permutation per source epoch is held in memory (4 bytes per row).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data import mixture, packing
from jaxlm.data.config import DataConfig
from jaxlm.data.sources import source_root
from jaxlm.data.stream import make_streams
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.outputs import check_output, output_path
from jaxlm.tokenizer import Tokenizer

META = "prepared.json"
VERSION = 1
DTYPES = {f: np.float32 if f == "loss_mask" else np.int32 for f in packing.FIELDS}


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """Changes when the tokenizer encodes differently (a few ids of a fixed text, and the vocab size)."""
    probe = "Fair is foul, and foul is fair: 1234 ünïcödé\n\tthe end"
    return hashlib.sha256(json.dumps([tok.vocab_size, tok.encode(probe)]).encode()).hexdigest()[:16]


def prepare(data_cfg: DataConfig, tokenizer: Tokenizer, out: str | Path, *, seq_len: int, overwrite: bool = False,
            progress=None) -> dict:
    """One pass over every source of data_cfg.sources (filters and dedup as configured, in file order):
    pack its documents into rows and write them to `out`. Returns the metadata written.
    An `out` that is, holds or lies inside a source or the tokenizer is refused: its rows would be read back
    as text by the next pass over the corpus."""
    inputs = [source_root(s) for s in data_cfg.sources] + [resolve_path(data_cfg.tokenizer)]
    out = check_output(out, overwrite=overwrite, inputs=inputs)
    streams = make_streams(data_cfg, data_cfg.sources, tokenizer, seq_len=seq_len, seed=0, train=False,
                           process_index=0, process_count=1)
    meta = {"version": VERSION, "seq_len": seq_len, "tokenizer": {
        "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer_fingerprint(tokenizer)},
        "sources": []}
    with output_path(out, checked=True) as tmp:
        for i, stream in enumerate(streams):
            (tmp / str(i)).mkdir()
            files = {f: open(tmp / str(i) / f"{f}.bin", "wb") for f in packing.FIELDS}
            rows = 0
            try:
                while (row := stream.next_row()) is not None:
                    for f, fh in files.items():
                        fh.write(np.ascontiguousarray(row[f], DTYPES[f]).tobytes())
                    rows += 1
                    if progress is not None:
                        progress(stream.src.label, rows)
            finally:
                for fh in files.values():
                    fh.close()
            if rows == 0:
                raise JaxlmError(f"data source {stream.src.label!r} gave no rows (every document dropped or the files "
                                 f"hold no text); fix the source or loosen data.filters")
            meta["sources"].append({"label": stream.src.label, "rows": rows, "stats": dict(stream.counters)})
        (tmp / META).write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(path: str | Path) -> dict:
    p = Path(path) / META
    if not p.is_file():
        raise JaxlmError(f"{path} holds no {META}; give a folder written by `jaxlm data prepare`")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise JaxlmError(f"{p} is unreadable ({e}); prepare the data again") from None
    if meta.get("version") != VERSION:
        raise JaxlmError(f"{p} is format version {meta.get('version')}, this jaxlm reads {VERSION}; prepare the data "
                         f"again")
    return meta


class PreparedBatches:
    """Endless training batches for one process from a prepared folder; get_state / set_state resume.
    The state describes the global stream, the same on every process, so a state saved by N processes
    resumes exactly on M (`global_state`)."""

    global_state = True

    def __init__(self, data_cfg: DataConfig, tokenizer: Tokenizer | None, *, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        root = Path(data_cfg.prepared)
        meta = read_meta(root)
        if meta["seq_len"] != seq_len:
            raise ConfigError(f"data.prepared {root} holds rows of {meta['seq_len']} tokens, train.seq_len is "
                              f"{seq_len}; set train.seq_len={meta['seq_len']} or prepare the data again")
        if tokenizer is not None and meta["tokenizer"]["fingerprint"] != tokenizer_fingerprint(tokenizer):
            raise ConfigError(f"data.prepared {root} was tokenized with another tokenizer "
                              f"({meta['tokenizer']['kind']}, {meta['tokenizer']['vocab_size']} ids) than "
                              f"data.tokenizer; prepare it again or point data.tokenizer at the one it used")
        labels = [s["label"] for s in meta["sources"]]
        wanted = [s.label for s in data_cfg.sources]
        if sorted(labels) != sorted(wanted):
            raise ConfigError(f"data.prepared {root} holds sources {labels}, data.sources names {wanted}; prepare the "
                              f"data again from this config")
        order = [labels.index(label) for label in wanted]  # data.sources order -> folder index
        self.rows = [meta["sources"][i]["rows"] for i in order]
        self.arrays = [{f: np.memmap(root / str(i) / f"{f}.bin", DTYPES[f], mode="r",
                                     shape=(meta["sources"][i]["rows"], seq_len)) for f in packing.FIELDS}
                       for i in order]
        self.phases = data_cfg.phase_weights()
        self.batch_size, self.process_index, self.process_count, self.seed = (batch_size, process_index,
                                                                              process_count, seed)
        self.step, self.phase, self.counts = 0, 0, [0] * len(self.rows)
        self.taken = [0] * len(self.rows)  # rows drawn from each source so far (all processes)
        self._perm: dict[int, tuple[int, np.ndarray]] = {}
        self.rows_read: list[tuple[int, int]] | None = None  # set to [] to record (source, row) reads (tests)

    def __iter__(self):
        return self

    def _pick(self) -> int:
        """Source of the next row: the on-the-fly pipeline's rule (jaxlm.data.mixture)."""
        k, self.phase, self.counts = mixture.pick(self.phases, self.step, self.phase, self.counts)
        return k

    def _row_index(self, k: int, c: int) -> int:
        epoch, i = divmod(c, self.rows[k])
        cached = self._perm.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, k, epoch])
            cached = (epoch, rng.permutation(self.rows[k]).astype(np.int64 if self.rows[k] >= 2**31 else np.int32))
            self._perm[k] = cached
        return int(cached[1][i])

    def __next__(self) -> dict[str, np.ndarray]:
        mine = range(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        picks = []
        for j in range(self.batch_size * self.process_count):  # the global batch: every process picks the same
            k = self._pick()
            if j in mine:
                picks.append((k, self._row_index(k, self.taken[k])))
            self.taken[k] += 1
        self.step += 1
        if self.rows_read is not None:
            self.rows_read += picks
        return {f: np.stack([self.arrays[k][f][r] for k, r in picks]) for f in packing.FIELDS}

    def get_state(self) -> dict:
        return {"prepared": VERSION, "step": self.step, "phase": self.phase, "counts": list(self.counts),
                "taken": list(self.taken)}

    def set_state(self, state: dict) -> None:
        if state.get("prepared") != VERSION or len(state.get("taken", ())) != len(self.rows):
            raise JaxlmError("saved data state is not one of this prepared folder (data.prepared or data.sources "
                             "changed?); resume with the same data section or start the data stream afresh")
        self.step, self.phase = int(state["step"]), int(state["phase"])
        self.counts, self.taken = [int(c) for c in state["counts"]], [int(t) for t in state["taken"]]

    def close(self) -> None:
        self.arrays = []
