"""`jaxlm data curate CONFIG --out DIR`: score, select and report (jaxlm.data.curate).
`jaxlm data train-classifier --positive P.. --negative N.. --out MODEL.bin`: the fastText quality classifier.

The perplexity stage's scorer is built here (a jaxlm model through `jaxlm.inference.Scorer`) and handed
to the data package, which sits below the model and inference packages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from jaxlm.cli.common import add_config_args, positive_int
from jaxlm.config import load_run_config
from jaxlm.errors import JaxlmError


def register(dsub) -> None:
    c = dsub.add_parser("curate", help="score every document (dedup, near-dedup, classifier, perplexity, "
                                       "decontamination), write attributes, curated shards and a report")
    add_config_args(c, required=True)
    c.add_argument("--out", required=True, help="the curate folder (created; a rerun resumes it)")
    c.add_argument("--from-attributes", action="store_true",
                   help="re-select with the config's thresholds from the saved scores: no rescoring")
    c.add_argument("--workers", type=positive_int, default=None, help="scoring processes (default: data.workers)")
    c.add_argument("--process-index", type=int, default=0, help="this process (0 .. --process-count - 1)")
    c.add_argument("--process-count", type=positive_int, default=1,
                   help="processes sharing the corpus; process 0 waits for the others, then selects and reports")
    c.add_argument("--stop-after-parts", type=positive_int, default=None, help=argparse_hidden())
    c.set_defaults(func=run_curate)
    t = dsub.add_parser("train-classifier", help="fit the fastText quality classifier from positive and negative "
                                                 "documents (for data.curate.classifier.model)")
    t.add_argument("--positive", nargs="+", required=True, help="files / folders of good documents")
    t.add_argument("--negative", nargs="+", required=True, help="files / folders of documents to filter out")
    t.add_argument("--unit", choices=("file", "paragraph", "line"), default="paragraph",
                   help="what one document is in plain text files (JSONL / Parquet: one per record)")
    t.add_argument("--out", required=True, help="the model file to write (MODEL.bin, and MODEL.bin.json beside it)")
    t.add_argument("--epoch", type=positive_int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train_classifier)


def argparse_hidden():
    import argparse  # lazy: only this hidden option's help needs it

    return argparse.SUPPRESS  # tests: stop after this many parts, as a kill would


def run_curate(args) -> int:
    # lazy: keeps `jaxlm --help` fast
    from jaxlm.data.curate.run import curate
    from jaxlm.tokenizer import load_tokenizer

    cfg = load_run_config(args.config, args.overrides)
    if not 0 <= args.process_index < args.process_count:
        raise JaxlmError(f"--process-index {args.process_index} is not in [0, {args.process_count - 1}]; give "
                         f"0 .. --process-count - 1")
    tok = load_tokenizer(cfg.data.tokenizer, cfg.data.tokenizer_kind)
    ppl = perplexity_stage(cfg.data, tok) if cfg.data.curate.perplexity.model else None
    summary = curate(cfg.data, tok, args.out, perplexity=ppl, workers=args.workers or cfg.data.workers,
                     process_index=args.process_index, process_count=args.process_count,
                     from_attributes=args.from_attributes, stop_after_parts=args.stop_after_parts)
    if summary is None:
        return 0
    for c in summary["stages"]:
        print(f"{c['stage']:>12}: documents {c['docs_in']:,} -> {c['docs_out']:,}, tokens {c['tokens_in']:,} -> "
              f"{c['tokens_out']:,}")
    if summary["perplexity_tokens_per_s"]:
        print(f"perplexity scoring: {summary['perplexity_tokens_per_s']:,.0f} tokens/s")
    print(f"wrote {args.out}/attributes.parquet, {args.out}/curated/ "
          f"({', '.join(f'{k}: {v:,}' for k, v in summary['curated'].items())} documents), {args.out}/report.md")
    return 0


def perplexity_stage(data, data_tok):
    """The perplexity stage of data.curate.perplexity.model: its own tokenizer checked against data.tokenizer."""
    # lazy: loading a model loads JAX, Orbax and the model code
    from jaxlm.checkpoint import load_model
    from jaxlm.checkpoint.locate import load_tokenizer_for
    from jaxlm.data.curate.perplexity import PerplexityStage, choose_tokenizer
    from jaxlm.data.prepared import tokenizer_fingerprint
    from jaxlm.inference.scoring import Scorer

    pcfg = data.curate.perplexity
    tok = choose_tokenizer(data_tok, load_tokenizer_for(pcfg.model), pcfg, tokenizer_fingerprint)
    _, model = load_model(pcfg.model)
    scorer = Scorer(model)
    return PerplexityStage(scorer.document_perplexities, tok, pcfg)


def run_train_classifier(args) -> int:
    # lazy: keeps `jaxlm --help` fast
    from jaxlm.data.config import SourceConfig
    from jaxlm.data.curate import classifier
    from jaxlm.data.sources import DocumentReader, list_files

    def documents(paths: list[str]) -> list[str]:
        docs = []
        for i, p in enumerate(paths):
            src = SourceConfig(path=p, unit=args.unit)
            reader = DocumentReader(src, list_files(src), seed=0, source_index=i, shuffle=False, repeat=False,
                                    on_bad_record="skip", counters=Counter())
            while (text := reader.next_doc()) is not None:
                docs.append(text)
        return docs

    pos, neg = documents(args.positive), documents(args.negative)
    meta = classifier.train(pos, neg, Path(args.out), classifier.TrainOptions(epoch=args.epoch, seed=args.seed))
    acc = meta["held_out_accuracy"]
    print(f"wrote {args.out} ({meta['bin_bytes'] / 1e6:.1f} MB) from {len(pos):,} positive and {len(neg):,} negative "
          f"documents; held-out accuracy {acc:.3f} on {meta['held_out_examples']:,}" if acc is not None else "")
    return 0
