"""Thresholds -> which documents stay, stage by stage, and the curated shards they make.

The funnel runs in a fixed order over the attributes table (one row per document, corpus order):
exact dedup, near dedup, heuristics (data.filters' min_chars / min_tokens and data.curate.heuristics),
decontamination, classifier, perplexity. A document leaves at the first stage that drops it (column
`dropped_by`, "" when kept); each stage's documents and tokens in and out are counted for the report.
Decontamination with action "flag" marks (`decontam_ngrams` > 0) but drops nothing.

Curated shards: DIR/curated/<source>/part-00000.jsonl ..., JSONL records {"id", "text", "source"} of the
kept documents in corpus order (at most 100,000 per file): a data source as they are
(`{path: DIR/curated/<source>, format: jsonl}`), and what `jaxlm data prepare` or the trainer reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxlm.data.config import DataConfig
from jaxlm.outputs import output_path

STAGES = ("exact_dedup", "near_dedup", "heuristics", "decontam", "classifier", "perplexity")
DOCS_PER_SHARD = 100_000


def stage_drops(data: DataConfig, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """stage -> (n,) bool: whether the stage would drop each document (on its own, before the funnel)."""
    cur = data.curate
    min_chars, min_tokens, _ = data.filters.resolved()
    n = len(cols["chars"])
    none = np.zeros(n, bool)
    h = cur.heuristics
    heur = ((cols["clean_chars"] < min_chars) | ((cols["tokens"] >= 0) & (cols["tokens"] < min_tokens))
            | (cols["words"] < h.min_words) | (cols["alpha_frac"] < h.min_alpha_frac)
            | (cols["symbol_frac"] > h.max_symbol_frac) | (cols["chars"] == 0))
    ppl = cols["perplexity"]
    return {
        "exact_dedup": cols["exact_duplicate"] if cur.exact_dedup else none,
        "near_dedup": (cols["near_dup_of"] >= 0) if cur.near_dedup.enabled else none,
        "heuristics": heur,
        "decontam": (cols["decontam_ngrams"] > 0) if cur.decontam.enabled and cur.decontam.action == "drop" else none,
        "classifier": (np.nan_to_num(cols["quality"], nan=1.0) < cur.classifier.min_score)
        if cur.classifier.model else none,
        "perplexity": (np.nan_to_num(ppl, nan=0.0) > cur.perplexity.max_perplexity)
        if cur.perplexity.model and cur.perplexity.max_perplexity > 0 else none,
    }


def funnel(data: DataConfig, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """(dropped_by (n,) object array of stage names or "", per-stage counts [{stage, docs_in, docs_out,
    tokens_in, tokens_out}])."""
    drops = stage_drops(data, cols)
    n = len(cols["chars"])
    alive = np.ones(n, bool)
    dropped_by = np.full(n, "", object)
    tokens = np.where(cols["tokens"] >= 0, cols["tokens"], 0)
    counts = []
    for stage in STAGES:
        out = alive & ~drops[stage]
        dropped_by[alive & drops[stage]] = stage
        counts.append({"stage": stage, "docs_in": int(alive.sum()), "docs_out": int(out.sum()),
                       "tokens_in": int(tokens[alive].sum()), "tokens_out": int(tokens[out].sum())})
        alive = out
    return dropped_by, counts


def write_curated(out: Path, labels: list[str], rows) -> dict[str, int]:
    """Write the kept documents: rows = iterable of (source label, id, text) in corpus order. The folder is
    written whole under a temporary name and renamed (an earlier curated/ is replaced only then)."""
    counts = {label: 0 for label in labels}
    with output_path(out, overwrite=True) as tmp:
        handles: dict[str, tuple] = {}
        for label, doc_id, text in rows:
            k = counts[label]
            if k % DOCS_PER_SHARD == 0:
                if label in handles:
                    handles[label][0].close()
                folder = tmp / safe_name(label)
                folder.mkdir(exist_ok=True)
                handles[label] = (open(folder / f"part-{k // DOCS_PER_SHARD:05d}.jsonl", "w", encoding="utf-8"),)
            handles[label][0].write(json.dumps({"id": doc_id, "text": text, "source": label}) + "\n")
            counts[label] = k + 1
        for (fh,) in handles.values():
            fh.close()
    return counts


def safe_name(label: str) -> str:
    """A source label as a folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip(".") or "source"
