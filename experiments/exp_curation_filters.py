"""Experiment: does curation as the papers do it (near-dedup + a learned quality classifier) beat the raw
mix and heuristics alone, at equal training tokens?

    python experiments/exp_curation_filters.py            # the real run (~12 min on 2 CPU cores)
    python experiments/exp_curation_filters.py --toy --out /tmp/ecf   # seconds (what the test runs)

Corpus: ../shared/data/shakespeare (--data-root), staged as exp_data_curation.py stages it: modern-
spelling works, the 1623 Folio and the OCR'd 1911 Britannica article, the two held-back plays removed
from every source in both spellings; every source read by paragraph (one document each).
Three data sets, each made by `jaxlm.data.curate` (the `jaxlm data curate` code) from the same corpus:
    raw         every paragraph, no filter;
    heuristics  exact dedup + Gopher-style rules (>= 5 words, >= 80% of words with a letter, <= 10%
                symbol characters);
    curated     heuristics + MinHash near-dedup (word 5-grams, Jaccard 0.8) + the fastText classifier
                of the bundled example (clean plays vs OCR'd / Folio text, P(high quality) >= 0.5) +
                13-gram decontamination against the held-back plays and the bundled eval tasks.
Each trains the same model (configs/exp_uniform.yaml: 1.5M parameters, the model of the earlier curation
experiment, so the two compare; the default run's 4.1M model would not fit 9 runs in the time budget)
for the same steps x batch x seq tokens, with its sources mixed by the bytes each kept. Held-back loss
= mean next-token cross-entropy on the held-back modern plays (and, as a side measure, the same plays
in Folio spelling). Writes curation_filters.{md,png,json}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402, I001
from exp_data_curation import held_out_tokens, stage_corpus  # noqa: E402

NAME = "curation_filters"
MODEL = "exp_uniform"
ARMS = ("raw", "heuristics", "curated")
REAL = dict(steps=160, batch=8, seq=128, seeds=(0, 1, 2), eval_tokens=16_384, model={})
TOY = dict(steps=2, batch=4, seq=32, seeds=(0,), eval_tokens=256, model={"num_layers": 2}, files_per_source=2)
HEURISTICS = dict(min_words=5, min_alpha_frac=0.8, max_symbol_frac=0.1)


def curate_settings(arm: str, classifier_path: Path) -> dict:
    if arm == "raw":
        return dict(exact_dedup=False, count_tokens=True)
    cur = dict(exact_dedup=True, heuristics=HEURISTICS)
    if arm == "curated":
        cur.update(near_dedup=dict(enabled=True, threshold=0.8),
                   classifier=dict(model=str(classifier_path), min_score=0.5),
                   decontam=dict(enabled=True, tasks=["bundled:eval"], validation=True))
    return cur


def train_classifier(path: Path) -> dict:
    """The bundled example: the 8 bundled modern plays against the bundled OCR'd and Folio text."""
    from jaxlm.cli.data_curate import run_train_classifier

    class Args:
        positive, negative, unit, out, epoch, seed = (["bundled:corpus/train"], ["bundled:curate/noisy"],
                                                      "paragraph", str(path), 10, 0)
    run_train_classifier(Args)
    import json

    return json.loads(Path(f"{path}.json").read_text())


def curate_arm(arm: str, dirs: dict[str, Path], work: Path, classifier_path: Path) -> dict:
    """Run the curate stages; returns the summary and the curated sources with byte weights."""
    import shutil

    from jaxlm.config import from_dict
    from jaxlm.data.config import DataConfig
    from jaxlm.data.curate.run import curate
    from jaxlm.tokenizer import load_tokenizer

    data = from_dict(DataConfig, {
        "sources": [dict(path=str(dirs[k]), name=k, unit="paragraph") for k in ("modern", "folio", "ocr")],
        "validation": [{"path": common.HELD_OUT, "name": "held_out"}],
        "curate": curate_settings(arm, classifier_path)})
    out = work / f"curate_{arm}"
    shutil.rmtree(out, ignore_errors=True)
    summary = curate(data, load_tokenizer(data.tokenizer), out, workers=1, log=lambda *_: None)
    sizes = {k: sum(f.stat().st_size for f in (out / "curated" / k).glob("*.jsonl"))
             for k in summary["curated"] if summary["curated"][k]}
    total = sum(sizes.values())
    srcs = [dict(path=str(out / "curated" / k), name=k, format="jsonl", weight=v / total) for k, v in sizes.items()]
    return dict(summary=summary, sources=srcs, weights={k: v / total for k, v in sizes.items()})


def main(argv=None) -> int:
    ap = common.parser(__doc__, "a seconds-long run of 2-layer models (for tests)")
    ap.add_argument("--data-root", default=str(common.SHAKESPEARE), help="the shakespeare corpus folder")
    args = ap.parse_args(argv)
    p = common.settings(args, TOY, REAL)
    out = Path(args.out)
    work = common.work_dir(args.work, out, NAME)
    log = common.Clock()

    from jaxlm.tokenizer import load_tokenizer

    dirs = stage_corpus(Path(args.data_root), work / "corpus", p.get("files_per_source"))
    tok = load_tokenizer(common.run_config(MODEL).data.tokenizer)
    held = held_out_tokens(tok, dirs, p["eval_tokens"])
    clf = train_classifier(work / "quality.bin")
    log(f"classifier: held-out accuracy {clf['held_out_accuracy']:.3f} on {clf['held_out_examples']} paragraphs")
    arms = {}
    for arm in ARMS:
        arms[arm] = curate_arm(arm, dirs, work, work / "quality.bin")
        s = arms[arm]["summary"]
        log(f"{arm}: kept {s['kept']:,} of {s['documents']:,} paragraphs, weights {arms[arm]['weights']}")
    runs: dict[str, dict] = {}
    for seed in p["seeds"]:
        for arm in ARMS:
            cfg = common.run_config(MODEL, model=p["model"], seed=seed,
                                    data=dict(sources=arms[arm]["sources"], prefetch=2),
                                    train=common.train_settings(p["steps"], p["batch"], p["seq"],
                                                                work / f"{arm}_s{seed}"))
            r = common.train_with_curve(cfg, held["modern"], p["steps"], p["seq"], reuse=not args.toy)
            from jaxlm.checkpoint import load_model

            r["folio_loss"] = common.heldout_loss(load_model(r["run_dir"])[1], held["folio"], p["seq"])
            runs.setdefault(arm, {})[seed] = r
            log(f"{arm} seed {seed}: held-back modern {r['curve'][-1][2]:.4f}, folio {r['folio_loss']:.4f} "
                f"({r['seconds']:.0f} s)")
    result = dict(toy=args.toy, params=p, classifier=clf, hardware=common.hardware(), seconds=log.seconds,
                  load=_load(), heldout_tokens={k: len(v) for k, v in held.items()},
                  curation={a: dict(stages=v["summary"]["stages"], kept=v["summary"]["kept"],
                                    documents=v["summary"]["documents"], weights=v["weights"])
                            for a, v in arms.items()},
                  final={a: {s: r["curve"][-1][2] for s, r in v.items()} for a, v in runs.items()},
                  folio={a: {s: r["folio_loss"] for s, r in v.items()} for a, v in runs.items()},
                  train_seconds={a: {s: r["seconds"] for s, r in v.items()} for a, v in runs.items()})
    common.write_results(out, NAME, result, plot, markdown, log)
    return 0


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def markdown(r: dict) -> str:
    p = r["params"]
    tokens = p["steps"] * p["batch"] * p["seq"]
    n = len(p["seeds"])
    rows = []
    for arm in ARMS:
        m, s = common.mean_std(r["final"][arm].values())
        mf, sf = common.mean_std(r["folio"][arm].values())
        rows.append([arm, m, s, f"{common.math.exp(m):.2f}", mf, sf,
                     f"{r['curation'][arm]['kept']:,} / {r['curation'][arm]['documents']:,}"])
    diff = lambda a, b, k="final": common.mean_std([r[k][a][s] - r[k][b][s] for s in r[k][a]])  # noqa: E731
    lines = [f"# Curation filters at equal tokens{' (TOY run: numbers meaningless)' if r['toy'] else ''}", "",
             "Command: `python experiments/exp_curation_filters.py`" + (" --toy" if r["toy"] else ""),
             f"Hardware: {r['hardware']}; whole experiment {r['seconds'] / 60:.1f} min; load average at the end "
             f"{r['load']} (1, 5, 15 min; 2 cores shared with other engineers' jobs, so times are under load).", "",
             f"Model {MODEL}; every run {p['steps']} steps x {p['batch']} x {p['seq']} = {tokens:,} tokens; {n} seeds "
             f"per data set. Held-back loss = mean next-token cross-entropy (nats) on "
             f"{r['heldout_tokens']['modern']:,} tokens of the held-back modern plays (side measure: the same plays in "
             f"Folio spelling). "
             f"Classifier (bundled example): held-out accuracy {r['classifier']['held_out_accuracy']:.3f} on "
             f"{r['classifier']['held_out_examples']} paragraphs.", ""]
    lines += common.md_table(["data", "held-back modern loss (mean)", "std over seeds", "perplexity",
                              "Folio-spelling loss", "std", "paragraphs kept"], rows)
    lines += ["", "Mix each data set trains on (share of kept bytes): " + "; ".join(
        f"{a}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["curation"][a]["weights"].items()) for a in ARMS), ""]
    lines += ["## Funnel of the curated set", "", "| stage | documents in | out | tokens in | out |",
              "| --- | --- | --- | --- | --- |"]
    for c in r["curation"]["curated"]["stages"]:
        lines.append(f"| {c['stage']} | {c['docs_in']:,} | {c['docs_out']:,} | {c['tokens_in']:,} | "
                     f"{c['tokens_out']:,} |")
    d_cr, s_cr = diff("curated", "raw")
    d_ch, s_ch = diff("curated", "heuristics")
    d_hr, s_hr = diff("heuristics", "raw")
    f_cr, _ = diff("curated", "raw", "folio")
    verdict = lambda d, s: ("lower" if d < 0 else "higher") + (  # noqa: E731
        ", by less than the spread over seeds: not a measured difference" if abs(d) <= 2 * s else "")
    lines += ["", "## What it shows", "",
              f"- curated - raw = {d_cr:+.4f} nats (std of the paired difference {s_cr:.4f}, {n} seeds): "
              f"{verdict(d_cr, s_cr)}.",
              f"- curated - heuristics = {d_ch:+.4f} (std {s_ch:.4f}): {verdict(d_ch, s_ch)}; heuristics - raw = "
              f"{d_hr:+.4f} (std {s_hr:.4f}): {verdict(d_hr, s_hr)}.",
              f"- On the same plays in Folio spelling, curated - raw = {f_cr:+.4f}: the classifier removes the Folio "
              f"and OCR domains, and the model pays for it there.",
              "- Why: at equal tokens the curated set is almost all modern-spelling text, the domain of the held-back "
              "plays; the heuristics remove page markers and OCR fragments but keep the Folio spelling. Near-dedup "
              "removes little here (the plays have few near-copies: stage directions and headings). What it cannot "
              "show: web-scale effects (the classifier here is close to a domain filter; real quality classifiers "
              "trade off many domains), and a 1.5M-parameter model at under 200k tokens.", ""]
    return "\n".join(lines) + "\n"


def plot(path: Path, r: dict) -> None:
    fig, axes = common.figure(2, width=5.0)
    panels = ((axes[0], "final", "held-back modern plays"), (axes[1], "folio", "same plays, Folio spelling"))
    for ax, key, title in panels:
        for k, arm in enumerate(ARMS):
            vals = list(r[key][arm].values())
            m, s = common.mean_std(vals)
            ax.bar(k, m, yerr=s, color=f"C{k}", alpha=0.6, capsize=4)
            ax.plot([k] * len(vals), vals, "ko", ms=4)
        ax.set_xticks(range(len(ARMS)), ARMS)
        lo = min(min(v.values()) for v in r[key].values())
        hi = max(max(v.values()) for v in r[key].values())
        ax.set_ylim(lo - 0.1 * (hi - lo + 0.1), hi + 0.1 * (hi - lo + 0.1))
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{title} ({len(r['params']['seeds'])} seeds: dots)")
    common.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
