"""On-the-fly reading sharded per process (whole files or byte / row ranges), worker processes for
filtering and tokenizing, and dedup with bounded memory (jaxlm/data/shards.py, workers.py, dedup.py)."""

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxlm.assets import ASSETS_DIR
from jaxlm.config.loader import from_dict
from jaxlm.data import DataConfig, SourceConfig, make_batch_iterator, make_eval_iterator, sources
from jaxlm.data.dedup import SeenHashes
from jaxlm.data.shards import Piece
from jaxlm.data.sources import DocumentReader
from jaxlm.errors import ConfigError

TRAIN = ASSETS_DIR / "corpus" / "train"
# Paragraph splitting's hard cases: CRLF, lines of only spaces or tabs, runs of blank lines, blank
# lines at the start, a last paragraph with no newline, a one-character paragraph.
TRICKY = ("\n\n  \nfirst para line one\nline two\r\n\r\n\t \n\nsecond para\n \nthird\r\nstill third\n"
          "\n\n\nx\n\n" + "a long paragraph line " * 12 + "\nits second line\n  \nlast para, no newline")


def speeches(play="macbeth.txt", n=400):
    return [p for p in (TRAIN / play).read_text().split("\n\n") if len(p.strip()) > 1][:n]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """name -> source config: many whole files, or one / two files that processes split by byte or row."""
    root = tmp_path_factory.mktemp("shard")
    out = {}
    (root / "many").mkdir()
    docs = speeches()
    for i in range(5):
        (root / "many" / f"p{i}.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in docs[i::5]))
    out["five jsonl files"] = SourceConfig(path=str(root / "many"))
    (root / "one.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches("hamlet.txt")))
    out["one jsonl file"] = SourceConfig(path=str(root / "one.jsonl"))
    (root / "lines.txt").write_text((TRAIN / "twelfth_night.txt").read_text()[:60000])
    out["one text file, lines"] = SourceConfig(path=str(root / "lines.txt"), unit="line")
    (root / "paras").mkdir()
    (root / "paras" / "a.txt").write_text((TRAIN / "macbeth.txt").read_text()[:40000] + TRICKY)
    (root / "paras" / "b.txt").write_text(TRICKY * 20)
    out["two text files, paragraphs"] = SourceConfig(path=str(root / "paras"), unit="paragraph")
    table = pa.table({"text": speeches("julius_caesar.txt", 900)})
    pq.write_table(table, root / "one.parquet", row_group_size=150)
    out["one parquet file"] = SourceConfig(path=str(root / "one.parquet"))
    return out


def docs_of(cfg, tok, pi, pc, seq_len=1024):
    """Every document of one eval pass of process pi (pad mode: one document per row), as token tuples."""
    out = []
    for b in make_eval_iterator(cfg, tok, seq_len=seq_len, batch_size=8, process_index=pi, process_count=pc):
        out += [tuple(r[s > 0].tolist()) for r, s in zip(b["inputs"], b["segment_ids"]) if s.any()]
    return out


def tokens_of(cfg, tok, pi, pc):
    """The token multiset of one eval pass of process pi in pack mode."""
    c = Counter()
    for b in make_eval_iterator(cfg, tok, seq_len=64, batch_size=8, process_index=pi, process_count=pc):
        c.update(b["inputs"][b["segment_ids"] > 0].tolist())
    return c


@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("layout", ["five jsonl files", "one jsonl file", "one text file, lines",
                                    "two text files, paragraphs", "one parquet file"])
def test_processes_together_read_every_document_exactly_once(tok, layouts, layout, processes):
    src = (layouts[layout],)
    pad = DataConfig(validation=src, mode="pad", prefetch=0)
    whole = docs_of(pad, tok, 0, 1)
    shares = [docs_of(pad, tok, p, processes) for p in range(processes)]
    assert len(whole) > 50 and sorted(sum(shares, [])) == sorted(whole)  # nothing lost, nothing read twice
    assert all(len(s) > len(whole) / processes / 3 for s in shares)  # and every process has a fair share
    pack = DataConfig(validation=src, prefetch=2)
    assert sum((tokens_of(pack, tok, p, processes) for p in range(processes)), Counter()) == tokens_of(pack, tok, 0, 1)


@pytest.mark.parametrize("layout", ["five jsonl files", "one text file, lines"])
def test_training_streams_cover_the_corpus_once_per_epoch(tok, layouts, layout):
    """Shuffled, repeating training streams (file order shuffled per epoch, no row window): the first
    epoch of each process is its shard, and the shards together are the corpus."""
    src = (layouts[layout],)
    whole = docs_of(DataConfig(validation=src, mode="pad", prefetch=0), tok, 0, 1)
    train = DataConfig(sources=src, mode="pad", shuffle_window=1, prefetch=2)
    first_epochs, orders = [], []
    for p in range(3):
        n = len(docs_of(DataConfig(validation=src, mode="pad", prefetch=0), tok, p, 3))
        it = make_batch_iterator(train, tok, seq_len=1024, batch_size=1, seed=5, process_index=p, process_count=3)
        got = [next(it) for _ in range(n)]
        it.close()
        first_epochs += [tuple(b["inputs"][0][b["segment_ids"][0] > 0].tolist()) for b in got]
        orders.append(first_epochs[-n:])
    assert sorted(first_epochs) == sorted(whole)
    if layout == "five jsonl files":  # process 0 has two files: read in shuffled order, not file order
        assert orders[0] != docs_of(DataConfig(validation=src, mode="pad", prefetch=0), tok, 0, 3)


class _Counting:
    """A binary file that records the bytes it hands to the reader and where it was read from."""

    def __init__(self, path, log):
        self._fh, self._log, self.path = open(path, "rb"), log, str(path)
        log.setdefault(self.path, {"bytes": 0, "lowest": None})

    def _note(self, start, data):
        entry = self._log[self.path]
        entry["bytes"] += len(data)
        if data:
            entry["lowest"] = start if entry["lowest"] is None else min(entry["lowest"], start)
        return data

    def read(self, *a):
        return self._note(self._fh.tell(), self._fh.read(*a))

    def readline(self, *a):
        return self._note(self._fh.tell(), self._fh.readline(*a))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):  # seek, tell, fileno, close
        return getattr(self._fh, name)


@pytest.fixture
def opened(monkeypatch):
    """{process index: {path: {"bytes": handed to the reader, "lowest": first byte read}}} of the files
    jaxlm.data.sources opens; set `opened.process` before building that process's iterator."""

    class Log(dict):
        process = 0

    logs = Log()

    def fake_open(path, mode="r", *a, **kw):
        assert mode == "rb"
        return _Counting(path, logs.setdefault(logs.process, {}))

    monkeypatch.setattr(sources, "open", fake_open, raising=False)
    return logs


def test_each_process_opens_only_its_own_files(tok, layouts, opened):
    src = layouts["five jsonl files"]
    files = [str(f) for f in sources.list_files(src)]
    cfg = DataConfig(sources=(src,), on_bad_record="error", prefetch=0, shuffle_window=4)
    for p in range(3):
        opened.process = p
        it = make_batch_iterator(cfg, tok, seq_len=256, batch_size=8, seed=1, process_index=p, process_count=3)
        for _ in range(60):  # more than two epochs of this process's files
            next(it)
        assert it.get_state()["streams"][0]["anchor"]["reader"]["epoch"] >= 2
        it.close()
        assert set(opened[p]) == set(files[p::3])  # its files (checked at start and read), no other


@pytest.mark.parametrize("processes", [2, 4])
def test_each_process_reads_only_its_byte_range(tok, layouts, opened, processes):
    src = layouts["one text file, lines"]
    path = str(sources.list_files(src)[0])
    size = len(open(path, "rb").read())
    longest = max(len(line) for line in open(path, "rb"))
    cfg = DataConfig(validation=(src,), prefetch=0)
    total = 0
    for p in range(processes):
        opened.process = p
        list(make_eval_iterator(cfg, tok, seq_len=64, batch_size=8, process_index=p, process_count=processes))
        (entry,) = opened[p].values()
        start, end = size * p // processes, size * (p + 1) // processes
        # from the byte before its range to the end of the last line that starts in it, nothing else
        assert entry["lowest"] >= max(0, start - 1)
        assert end - start <= entry["bytes"] <= end - start + 2 * longest
        total += entry["bytes"]
    assert total <= size + processes * 2 * longest


def test_every_split_point_keeps_each_record_once(tmp_path):
    """A range [a, b) owns the records that start in it: for every cut of a file into two ranges (and
    random cuts into three), the ranges' records are the whole file's, in order."""
    path = tmp_path / "t.txt"
    path.write_bytes(TRICKY.encode())
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} " * (i % 4)}) for i in range(30))
                                      + "\n\n  \n" + json.dumps({"text": "last"}))
    size = path.stat().st_size
    for src, n in ((SourceConfig(path=str(path), unit="paragraph"), size),
                   (SourceConfig(path=str(path), unit="line"), size),
                   (SourceConfig(path=str(tmp_path / "t.jsonl")), (tmp_path / "t.jsonl").stat().st_size)):
        file = sources.list_files(src)[0]

        def read(pieces):
            reader = DocumentReader(src, [], seed=0, source_index=0, shuffle=False, repeat=False,
                                    on_bad_record="error", counters=Counter(), pieces=pieces)
            out = []
            while (d := reader.next_doc()) is not None:
                out.append(d)
            return out

        whole = read([Piece(file)])
        assert len(whole) >= 6
        for a in range(n + 1):
            assert read([Piece(file, 0, a), Piece(file, a, n, first=False)]) == whole, (src.unit, a)
        rng = random.Random(0)
        for _ in range(100):
            a, b = sorted(rng.sample(range(n + 1), 2))
            assert read([Piece(file, 0, a), Piece(file, a, b, False), Piece(file, b, n, False)]) == whole


def batch_hash(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode() + batch[k].tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two sources with duplicates and short documents, for filters + dedup + mixture phases."""
    root = tmp_path_factory.mktemp("mixed")
    docs = speeches()
    (root / "words").mkdir()
    with open(root / "words" / "a.jsonl", "w") as f:
        for s in docs + docs[:30] + ["hi", "  "]:
            f.write(json.dumps({"text": s}) + "\n")
    (root / "lines").mkdir()
    (root / "lines" / "l.txt").write_text((TRAIN / "hamlet.txt").read_text()[:30000])
    return from_dict(DataConfig, {
        "sources": [{"path": str(root / "words"), "name": "words"},
                    {"path": str(root / "lines"), "name": "lines", "unit": "line"}],
        "phases": [{"start_step": 0, "weights": {"words": 1.0}},
                   {"start_step": 4, "weights": {"words": 0.5, "lines": 0.5}}],
        "filters": {"min_chars": 12, "dedup": True}, "shuffle_window": 8, "prefetch": 2})


def test_worker_processes_give_the_same_batches_and_resume_exactly(tok, mixed):
    def stream(workers, steps, state=None, pi=0, pc=1):
        cfg = dataclasses.replace(mixed, workers=workers)
        it = make_batch_iterator(cfg, tok, seq_len=48, batch_size=4, seed=3, process_index=pi, process_count=pc)
        if state is not None:
            it.set_state(state)
        out = [batch_hash(next(it)) for _ in range(steps)]
        final = it.get_state()
        it.close()
        return out, final

    one, one_state = stream(1, 40)
    two, two_state = stream(2, 40)
    assert one == two and one_state == two_state  # batches, positions and drop counts alike
    assert one_state["streams"][0]["counters"]["dropped_duplicate"] > 0
    _, mid = stream(1, 17)
    assert stream(2, 23, state=mid)[0] == one[17:]  # a state saved with 1 worker resumes on 2
    # process 1 of 2: both sources are single files, so it reads byte ranges; resume there too
    ranged, _ = stream(1, 30, pi=1, pc=2)
    assert stream(2, 30, pi=1, pc=2)[0] == ranged and ranged != one[:30]
    _, mid = stream(2, 11, pi=1, pc=2)
    assert stream(1, 19, state=mid, pi=1, pc=2)[0] == ranged[11:]


def test_worker_processes_in_an_eval_pass(tok, mixed):
    cfg = dataclasses.replace(mixed, validation=mixed.sources, prefetch=0)
    passes = {}
    for w in (1, 2):
        it = make_eval_iterator(dataclasses.replace(cfg, workers=w), tok, seq_len=64, batch_size=4)
        passes[w] = [batch_hash(b) for b in it]
        passes[w, "stats"] = it.stats()
    assert passes[1] == passes[2] and passes[1, "stats"] == passes[2, "stats"]
    stats = passes[1, "stats"]
    assert stats["dropped_duplicate"] >= 30 and stats["dropped_empty_document"] == 1  # decided in order...
    assert stats["dropped_too_few_chars"] > 1 and stats["documents"] > 500  # ...and in the workers


def test_dedup_memory_is_fixed_and_forgets_only_beyond_its_bound():
    seen = SeenHashes(100)  # rounded up to 128 hashes
    assert seen.capacity == 128 and seen.nbytes == 32 * 128
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(1, 2**63, size=5000, dtype=np.int64)]
    for i, h in enumerate(hashes):
        assert not seen.add(h)  # distinct: never a false duplicate
        assert seen.nbytes == 32 * 128  # memory never grows
        if i % 97 == 0 or i > 4900:
            assert all(x in seen for x in hashes[max(0, i - 127):i + 1])  # the last `capacity`: always
            assert not any(x in seen for x in hashes[:max(0, i + 1 - 256)])  # beyond 2 x capacity: never
    forgotten = sum(not seen.add(h) for h in hashes[:3000])  # far beyond the bound: forgotten
    assert forgotten == 3000
    lru = SeenHashes(2)  # a document seen again counts as recent
    assert [lru.add(h) for h in (1, 2, 1, 3, 4, 1, 5, 6, 7, 1, 5)] == [False, False, True, False, False, True,
                                                                      False, False, False, True, False]


def test_dedup_capacity_in_the_pipeline_and_exact_resume_with_evictions(tok, tmp_path):
    docs = [f"document {i} " + "word " * (i % 9) for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + docs))
    src = (SourceConfig(path=str(tmp_path / "d.jsonl")),)

    def drops(capacity):
        cfg = from_dict(DataConfig, {"filters": {"dedup": True, "dedup_capacity": capacity}, "prefetch": 0})
        it = make_eval_iterator(cfg, tok, seq_len=64, batch_size=4, sources_=src)
        list(it)
        return it.stats().get("dropped_duplicate", 0)

    assert drops(64) == 60  # every repeat found while the memory holds them all
    assert drops(16) == 0  # each repeat comes 60 documents later: past the bound (16..32), forgotten
    cfg = from_dict(DataConfig, {"sources": [{"path": str(tmp_path / "d.jsonl")}], "prefetch": 3,
                                 "filters": {"dedup": True, "dedup_capacity": 32}, "shuffle_window": 4})
    it = make_batch_iterator(cfg, tok, seq_len=32, batch_size=4, seed=2)
    reference = [batch_hash(next(it)) for _ in range(60)]
    for stop in (7, 33, 51):
        it = make_batch_iterator(cfg, tok, seq_len=32, batch_size=4, seed=2)
        head = [batch_hash(next(it)) for _ in range(stop)]
        state = json.loads(json.dumps(it.get_state()))
        it.close()
        resumed = make_batch_iterator(cfg, tok, seq_len=32, batch_size=4, seed=2)
        resumed.set_state(state)
        assert head + [batch_hash(next(resumed)) for _ in range(60 - stop)] == reference, stop
        resumed.close()


def test_config_errors_name_the_fix(tok, tmp_path):
    (tmp_path / "one.txt").write_text("a single whole-file document\n")
    cfg = DataConfig(sources=(SourceConfig(path=str(tmp_path / "one.txt")),))
    with pytest.raises(ConfigError, match="cannot feed 2 processes.*split it into >= 2 files or set unit"):
        make_batch_iterator(cfg, tok, seq_len=16, batch_size=2, seed=0, process_index=1, process_count=2)
    with pytest.raises(ConfigError, match="data.workers is 0"):
        from_dict(DataConfig, {"workers": 0})
    with pytest.raises(ConfigError, match="dedup_capacity is 0"):
        from_dict(DataConfig, {"filters": {"dedup_capacity": 0}})


def test_a_script_without_a_main_guard_gets_a_one_line_error(tmp_path, repo_root):
    """Worker processes are spawned and import the main script: unguarded, it would start them again."""
    (tmp_path / "d.txt").write_text("some words to tokenize\n" * 50)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from jaxlm.data import DataConfig, SourceConfig, make_eval_iterator\n"
        "from jaxlm.tokenizer import load_tokenizer\n"
        f"cfg = DataConfig(validation=(SourceConfig(path={str(tmp_path / 'd.txt')!r}, unit='line'),), workers=2)\n"
        "list(make_eval_iterator(cfg, load_tokenizer('bundled:tokenizer'), seq_len=16, batch_size=2))\n")
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "a tokenizer worker process died" in last and 'if __name__ == "__main__":' in last, r.stderr[-2000:]
