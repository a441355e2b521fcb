"""DIR/report.md: documents and tokens in / out per stage, score histograms (PNG), and examples at each
threshold (the documents just kept and just dropped, near-duplicate pairs, decontaminated spans)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from jaxlm.data.config import DataConfig
from jaxlm.outputs import output_path, write_file

EXCERPT = 160


def write(out: Path, data: DataConfig, attrs: dict, cols: dict, texts, summary: dict) -> None:
    """texts[i]: document i's text (run.PartTexts)."""
    cur = data.curate
    lines = ["# Curation report", "", f"Corpus fingerprint `{summary['fingerprint']}`: {summary['documents']:,} "
             f"documents read from {', '.join(s.label for s in data.sources)}; {summary['kept']:,} kept.", "",
             "| stage | documents in | documents out | dropped | tokens in | tokens out |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in summary["stages"]:
        lines.append(f"| {c['stage']} | {c['docs_in']:,} | {c['docs_out']:,} | {c['docs_in'] - c['docs_out']:,} | "
                     f"{c['tokens_in']:,} | {c['tokens_out']:,} |")
    if summary.get("perplexity_tokens_per_s"):
        lines += ["", f"Perplexity stage: {summary['perplexity_tokens_per_s']:,.0f} tokens/s."]
    lines += ["", "Curated shards: " + ", ".join(f"{k} {v:,} documents" for k, v in summary["curated"].items()), ""]
    plots = {"quality": ("classifier P(high quality)", cur.classifier.min_score if cur.classifier.model else None),
             "perplexity": ("perplexity (log scale)", cur.perplexity.max_perplexity or None),
             "alpha_frac": ("share of words with a letter", cur.heuristics.min_alpha_frac or None),
             "symbol_frac": ("share of symbol characters", None)}
    for name, (label, threshold) in plots.items():
        values = np.asarray(cols[name], float)
        if np.isfinite(values).any():
            _histogram(out / f"hist_{name}.png", values, cols["source"], label, threshold, log=name == "perplexity")
            lines += [f"![{name}](hist_{name}.png)", ""]
    lines += _threshold_examples(attrs, cols, texts, cur)
    lines += _near_dup_examples(attrs, cols, texts)
    lines += _decontam_spans(attrs, cols, texts)
    write_file(out / "report.md", "\n".join(lines) + "\n")


def _excerpt(text: str) -> str:
    t = " ".join(text.split())
    return (t[:EXCERPT] + " ...") if len(t) > EXCERPT else t


def _threshold_examples(attrs, cols, texts, cur) -> list[str]:
    out = []
    for name, threshold, keep_above in (("quality", cur.classifier.min_score if cur.classifier.model else None, True),
                                        ("perplexity", cur.perplexity.max_perplexity or None, False)):
        values = np.asarray(cols[name], float)
        if threshold is None or not np.isfinite(values).any():
            continue
        order = np.argsort(np.abs(np.nan_to_num(values, nan=np.inf) - threshold))[:6]
        out += [f"## Examples at {name} = {threshold}", "", f"| {name} | kept by this stage | id | text |",
                "| --- | --- | --- | --- |"]
        for i in order:
            kept = values[i] >= threshold if keep_above else values[i] <= threshold
            out.append(f"| {values[i]:.4g} | {'yes' if kept else 'no'} | {attrs['id'][i]} | "
                       f"{_excerpt(texts[i]).replace('|', '/')} |")
        out.append("")
    return out


def _near_dup_examples(attrs, cols, texts) -> list[str]:
    dup = np.flatnonzero(cols["near_dup_of"] >= 0)
    if not len(dup):
        return []
    out = [f"## Near duplicates ({len(dup):,} documents dropped for an earlier one), first examples", "",
           "| dropped | kept (its cluster's first) |", "| --- | --- |"]
    for i in dup[:5]:
        j = int(cols["near_dup_of"][i])
        out.append(f"| {attrs['id'][i]}: {_excerpt(texts[i]).replace('|', '/')} | {attrs['id'][j]}: "
                   f"{_excerpt(texts[j]).replace('|', '/')} |")
    return out + [""]


def _decontam_spans(attrs, cols, texts) -> list[str]:
    hit = np.flatnonzero(cols["decontam_ngrams"] > 0)
    if not len(hit):
        return ["## Decontamination", "", "No document shares an n-gram with the evaluation sets.", ""]
    out = [f"## Decontamination: {len(hit):,} documents overlap the evaluation sets", "",
           "| document | eval file | overlapping span |", "| --- | --- | --- |"]
    for i in hit[:50]:
        for start, end, name in json.loads(cols["decontam_spans"][i]):
            out.append(f"| {attrs['id'][i]} | {name} | {_excerpt(texts[i][start:end]).replace('|', '/')} |")
    return out + [""]


def _histogram(path: Path, values: np.ndarray, sources, label: str, threshold, log: bool) -> None:
    import matplotlib  # lazy: matplotlib takes a second to load, and only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, ax = plt.subplots(figsize=(6, 3.5))
    finite = np.isfinite(values)
    data = np.log10(values[finite]) if log else values[finite]
    bins = np.linspace(data.min(), data.max() + 1e-9, 41) if len(data) else 10
    for src in dict.fromkeys(sources):
        sel = finite & (np.asarray(sources) == src)
        ax.hist(np.log10(values[sel]) if log else values[sel], bins=bins, alpha=0.6, label=str(src))
    if threshold:
        ax.axvline(math.log10(threshold) if log else threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel(f"log10 {label}" if log else label)
    ax.set_ylabel("documents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with output_path(path, overwrite=True, folder=False) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
