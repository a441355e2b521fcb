"""`jaxlm data curate`: score this process's parts in workers, then (process 0) cluster, select and report.

    summary = curate(data_cfg, tokenizer, out, workers=2)                  # one process
    curate(..., process_index=p, process_count=N)                          # each of N processes
    curate(..., from_attributes=True)                                      # thresholds changed: no rescoring

Phase 1, every process: its parts (jaxlm.data.curate.parts), each read in order and sent to the
workers in chunks of `chunk_docs` documents (results taken in submission order), the perplexity stage
run in this process, and the part written atomically. Phase 2, process 0 only, once every process's
parts exist (it waits for them): the global steps in corpus order (exact dedup with the bounded
`SeenHashes` memory, MinHash clusters), the funnel of thresholds, DIR/attributes.parquet, DIR/curated/
and DIR/report.md. Phase 2 reads only the parts, so `from_attributes` reruns it alone.

DIR/manifest.json records the corpus fingerprint and the scoring settings (not the thresholds): a
rerun with another corpus or other scoring settings is refused instead of mixing parts.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from jaxlm.data.config import DataConfig
from jaxlm.data.curate import attributes, decontam, minhash, parts, report, select
from jaxlm.data.curate.config import CurateConfig
from jaxlm.data.dedup import SeenHashes
from jaxlm.data.sources import DocumentReader, list_files
from jaxlm.errors import JaxlmError
from jaxlm.outputs import output_path, write_file

ATTRIBUTES = "attributes.parquet"
MANIFEST = "manifest.json"


def curate(data: DataConfig, tokenizer, out, *, perplexity=None, workers: int = 1, process_index: int = 0,
           process_count: int = 1, from_attributes: bool = False, stop_after_parts: int | None = None,
           wait_s: float = 86_400.0, log=print) -> dict | None:
    """Run the stages; returns process 0's summary (None for other processes, or when stopped early).
    perplexity: a jaxlm.data.curate.perplexity.PerplexityStage when data.curate.perplexity.model is set."""
    out = Path(out).absolute()
    if data.curate.perplexity.model and perplexity is None:
        raise JaxlmError("data.curate.perplexity.model is set but no scorer was given; run `jaxlm data curate`")
    folder = parts.part_dir(out, process_count)
    manifest = _manifest(data, tokenizer, perplexity)
    if from_attributes:
        _check_saved(out, manifest, process_count)
    else:
        scoring = _scoring(data, tokenizer)  # a wrong classifier or task file fails here, before anything is written
        _claim(out, manifest)
        t0 = time.perf_counter()
        done = _score_parts(data, scoring, folder, perplexity, workers, process_index, process_count,
                            stop_after_parts, log)
        log(f"process {process_index}/{process_count}: {done} part(s) scored in {time.perf_counter() - t0:.1f} s")
        if stop_after_parts is not None and done >= stop_after_parts:
            return None
    if process_index != 0:
        return None
    _wait_for_parts(data, folder, process_count, 0.0 if from_attributes else wait_s)
    return finalize(data, out, folder, manifest, perplexity, log)


# -- phase 1 ---------------------------------------------------------------------------------------
def _scoring(data: DataConfig, tokenizer) -> attributes.Scoring:
    cur = data.curate
    index = None
    if cur.decontam.enabled:
        items = decontam.task_items(cur.decontam.tasks)
        if cur.decontam.validation:
            items += _validation_items(data)
        index = decontam.build_index(items, cur.decontam.ngram, cur.decontam.min_item_words)
    if cur.classifier.model:
        from jaxlm.data.curate import classifier  # lazy: imports fastText

        classifier.load(cur.classifier.model)  # checked once here, before any worker starts
    return attributes.Scoring(cur, tokenizer, index, cur.classifier.model)


def _validation_items(data: DataConfig) -> list[tuple[str, str]]:
    items = []
    for si, src in enumerate(data.validation):
        reader = DocumentReader(src, list_files(src), seed=0, source_index=si, shuffle=False, repeat=False,
                                on_bad_record="skip", counters=Counter())
        while (text := reader.next_doc()) is not None:
            items.append((f"validation:{src.label}", text))
    return items


def _score_parts(data, scoring, folder, perplexity, workers, process_index, process_count, stop_after, log) -> int:
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                initargs=(scoring,)) if workers > 1 else None)
    done = 0
    try:
        for part in parts.plan(data, process_index, process_count):
            if parts.done(folder, part):
                continue
            table, sig = _score_part(data, part, scoring, pool, workers, perplexity)
            parts.write_part(folder, part, table, sig)
            done += 1
            log(f"  part {part.name}: {table.num_rows:,} documents")
            if stop_after is not None and done >= stop_after:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return done


_WORKER_SCORING: attributes.Scoring | None = None


def _init_worker(scoring: attributes.Scoring) -> None:
    global _WORKER_SCORING
    _WORKER_SCORING = scoring


def _score_in_worker(texts: list[str]):
    return attributes.score_chunk(_WORKER_SCORING, texts)


def _score_part(data: DataConfig, part: parts.Part, scoring, pool, workers, perplexity):
    import pyarrow as pa  # lazy: pyarrow loads in a second

    docs = list(parts.read_documents(part, data.on_bad_record, Counter()))
    texts = [t for _, _, t in docs]
    size = data.curate.chunk_docs
    chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
    if pool is not None:
        results = [f.result() for f in [pool.submit(_score_in_worker, c) for c in chunks]]
    else:
        results = [attributes.score_chunk(scoring, c) for c in chunks]
    cols = {c: [v for r in results for v in r[0][c]] for c in attributes.COLUMNS}
    cols["perplexity"] = list(perplexity(texts)) if perplexity is not None else [float("nan")] * len(texts)
    files = [str(part.files[f]) for f, _, _ in docs]
    table = pa.table({"source_index": [part.source_index] * len(docs), "source": [part.source.label] * len(docs),
                      "file_index": [f for f, _, _ in docs], "file": files, "offset": [o for _, o, _ in docs],
                      "text": texts, **cols})
    sig = None
    if data.curate.near_dedup.enabled:
        nd = data.curate.near_dedup
        sig = (np.concatenate([r[1] for r in results]) if results else np.zeros((0, nd.num_perm), np.uint32))
    return table, sig


# -- run bookkeeping -------------------------------------------------------------------------------
def _manifest(data: DataConfig, tokenizer, perplexity) -> dict:
    """What the scores depend on: the corpus, and every scoring setting (never a threshold)."""
    # lazy: classifier imports fastText; prepared loads the packing code
    from jaxlm.data.curate import classifier
    from jaxlm.data.prepared import tokenizer_fingerprint

    cur = data.curate
    scoring = {"near_dedup": [cur.near_dedup.enabled, cur.near_dedup.unit, cur.near_dedup.ngram,
                              cur.near_dedup.num_perm, cur.near_dedup.seed],
               "classifier": classifier.file_hash(cur.classifier.model) if cur.classifier.model else None,
               "perplexity": [cur.perplexity.model, cur.perplexity.max_tokens] if cur.perplexity.model else None,
               "decontam": dataclasses.asdict(dataclasses.replace(cur.decontam, action="drop")),
               "tokens": tokenizer_fingerprint(tokenizer) if cur.count_tokens else None}
    manifest = {"fingerprint": parts.fingerprint(data), "scoring": scoring, "sources": [s.label for s in data.sources]}
    return json.loads(json.dumps(manifest))  # as it reads back (tuples -> lists)


def _claim(out: Path, manifest: dict) -> None:
    path = out / MANIFEST
    if path.is_file():
        saved = json.loads(path.read_text())
        _compare(saved, manifest, out)
    else:
        if out.exists() and any(p.name != "parts" for p in out.iterdir() if not p.name.startswith(".")):
            raise JaxlmError(f"output {out} exists and is not a curate folder; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        write_file(path, json.dumps(manifest, indent=2) + "\n")


def _compare(saved: dict, manifest: dict, out: Path) -> None:
    if saved.get("fingerprint") != manifest["fingerprint"] or saved.get("sources") != manifest["sources"]:
        raise JaxlmError(f"{out} holds attributes of another corpus (fingerprint {saved.get('fingerprint')}, this "
                         f"corpus {manifest['fingerprint']}); curate into a new --out")
    if saved.get("scoring") != manifest["scoring"]:
        changed = sorted(k for k in manifest["scoring"] if saved.get("scoring", {}).get(k) != manifest["scoring"][k])
        raise JaxlmError(f"{out} was scored with other settings ({', '.join(changed)}); thresholds can change with "
                         f"--from-attributes, scoring settings need a new --out")


def _check_saved(out: Path, manifest: dict, process_count: int) -> None:
    path = out / MANIFEST
    if not path.is_file():
        raise JaxlmError(f"{out} holds no curate run ({MANIFEST} missing); run `jaxlm data curate` without "
                         f"--from-attributes first")
    _compare(json.loads(path.read_text()), manifest, out)


def _wait_for_parts(data: DataConfig, folder: Path, process_count: int, wait_s: float) -> None:
    missing = [pt for p in range(process_count) for pt in parts.plan(data, p, process_count)
               if not parts.done(folder, pt)]
    deadline = time.monotonic() + wait_s
    while missing:
        if time.monotonic() > deadline:
            raise JaxlmError(f"{len(missing)} part(s) of {folder} are missing (e.g. {missing[0].name}); run every "
                             f"process (--process-index 0..{process_count - 1}) to the end without --from-attributes")
        time.sleep(1.0)
        missing = [pt for pt in missing if not parts.done(folder, pt)]


# -- phase 2 ---------------------------------------------------------------------------------------
def _load_parts(folder: Path) -> tuple[list[Path], dict[str, np.ndarray], np.ndarray | None, list[int]]:
    import pyarrow.parquet as pq  # lazy: pyarrow loads in a second

    files = sorted(folder.glob("*.parquet"), key=_part_order)
    tables = [pq.read_table(f, columns=[c for c in pq.read_schema(f).names if c != "text"]) for f in files]
    cols = {name: np.concatenate([t.column(name).to_numpy(zero_copy_only=False) for t in tables])
            for name in tables[0].column_names} if tables else {}
    sig_files = [f.with_name(f.name.replace(".parquet", ".sig.npy")) for f in files]
    sig = np.concatenate([np.load(s) for s in sig_files]) if sig_files and all(s.is_file() for s in sig_files) \
        else None
    return files, cols, sig, [t.num_rows for t in tables]


def _part_order(path: Path) -> tuple:
    s, f, start, _ = path.name.removesuffix(".parquet").split("-", 3)
    return int(s[1:]), int(f[1:]), int(start)


def finalize(data: DataConfig, out: Path, folder: Path, manifest: dict, perplexity, log) -> dict:
    import pyarrow as pa  # lazy: pyarrow loads in a second
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    files, cols, sig, part_rows = _load_parts(folder)
    if not files:
        raise JaxlmError(f"no documents were read from data.sources ({', '.join(s.path for s in data.sources)}); "
                         f"check the paths and formats")
    n = len(cols["chars"])
    ids = np.array([f"{s}:{f}:{o}" for s, f, o in zip(cols["source"], cols["file_index"], cols["offset"])], object)
    seen = SeenHashes(data.filters.dedup_capacity)
    cols["exact_duplicate"] = np.array([seen.add(int(np.int64(h).view(np.uint64))) for h in cols["exact_hash"]], bool)
    cols["near_dup_of"] = np.full(n, -1, np.int64)
    if data.curate.near_dedup.enabled and sig is not None:
        active = ~cols["exact_duplicate"] if data.curate.exact_dedup else np.ones(n, bool)
        rep = minhash.clusters(sig, active, data.curate.near_dedup.threshold, data.curate.near_dedup.bands)
        cols["near_dup_of"] = np.where((rep >= 0) & (rep != np.arange(n)), rep, -1)
    dropped_by, counts = select.funnel(data, cols)
    attrs = {"id": ids, **{k: v for k, v in cols.items() if k != "near_dup_of"},
             "near_dup_of": np.array([ids[r] if r >= 0 else "" for r in cols["near_dup_of"]], object),
             "dropped_by": dropped_by}
    table = pa.table(attrs).replace_schema_metadata({"jaxlm_fingerprint": manifest["fingerprint"],
                                                     "jaxlm_curate": json.dumps(dataclasses.asdict(data.curate))})
    with output_path(out / ATTRIBUTES, overwrite=True, folder=False) as tmp:
        pq.write_table(table, tmp)
    keep = dropped_by == ""
    texts = PartTexts(files, part_rows)
    kept = select.write_curated(out / "curated", [s.label for s in data.sources],
                                ((cols["source"][i], ids[i], texts[i]) for i in np.flatnonzero(keep)))
    summary = {"documents": n, "kept": int(keep.sum()), "stages": counts, "curated": kept,
               "fingerprint": manifest["fingerprint"], "select_seconds": time.perf_counter() - t0,
               "perplexity_tokens_per_s": perplexity.tokens_per_s if perplexity is not None else None}
    report.write(out, data, attrs, cols, texts, summary)
    log(f"kept {summary['kept']:,} of {n:,} documents; wrote {out / ATTRIBUTES}, {out / 'curated'}, "
        f"{out / 'report.md'}")
    return summary


class PartTexts:
    """texts[i]: document i's text (corpus order), read from its part file when asked; one part is held at a time,
    so writing the curated shards (in order) and the report's examples never hold the corpus in memory."""

    def __init__(self, files: list[Path], rows: list[int]):
        self.files, self.starts = files, np.cumsum([0] + rows)
        self._part, self._texts = -1, []

    def __getitem__(self, i: int) -> str:
        import pyarrow.parquet as pq  # lazy: pyarrow loads in a second

        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        if part != self._part:
            self._texts = pq.read_table(self.files[part], columns=["text"]).column("text").to_pylist()
            self._part = part
        return self._texts[i - self.starts[part]]


__all__ = ["CurateConfig", "curate", "finalize"]
