"""`jaxlm data stats CONFIG`: documents, tokens, filter drops and tokens/s of the data pipeline.
`jaxlm data prepare CONFIG --out DIR`: tokenize and pack data.sources once; train with data.prepared=DIR.
`jaxlm data chat-example [--out DIR]`: the bundled SFT / DPO example (jaxlm.posttrain.example).
`jaxlm data curate` / `jaxlm data train-classifier`: jaxlm.cli.data_curate."""

from __future__ import annotations

import time
from pathlib import Path

from jaxlm.cli import data_curate
from jaxlm.cli.common import add_config_args, positive_int
from jaxlm.config import load_run_config
from jaxlm.errors import JaxlmError


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect the data pipeline")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    s = dsub.add_parser("stats", help="one pass over the sources: documents, tokens, drops, tokens/s")
    add_config_args(s, required=True)
    s.add_argument("--split", choices=("train", "validation"), default="train",
                   help="data.sources (train) or data.validation")
    s.add_argument("--seq-len", type=positive_int, default=None, help="row length (default: model.max_context)")
    s.add_argument("--batch-size", type=positive_int, default=8)
    s.add_argument("--max-batches", type=positive_int, default=None, help="stop early after this many batches")
    s.set_defaults(func=run_stats)
    pr = dsub.add_parser("prepare", help="tokenize and pack data.sources once into DIR; then train with "
                                         "--set data.prepared=DIR")
    add_config_args(pr, required=True)
    pr.add_argument("--out", required=True, help="the folder to write (refused if it exists, unless --overwrite)")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    pr.set_defaults(func=run_prepare)
    ce = dsub.add_parser("chat-example", help="write the bundled post-training example (SFT conversations and "
                                              "DPO pairs from the bundled plays, with held-back splits)")
    ce.add_argument("--out", default="runs/chat_data", help="output folder (default: runs/chat_data, where "
                                                             "configs/sft_plays.yaml and dpo_plays.yaml read it)")
    ce.set_defaults(func=run_chat_example)
    data_curate.register(dsub)


def run_chat_example(args) -> int:
    from jaxlm.posttrain.example import build  # lazy: keeps `jaxlm --help` fast

    for name, count in build(Path(args.out)).items():
        print(f"{args.out}/{name}.jsonl: {count:,} records")
    return 0


def run_prepare(args) -> int:
    # lazy: keeps `jaxlm --help` fast (the data pipeline loads Grain, the tokenizers load sentencepiece and tiktoken)
    from jaxlm.data.prepared import prepare
    from jaxlm.tokenizer import check_vocab
    from jaxlm.training.run_dir import load_run_tokenizer

    cfg = load_run_config(args.config, args.overrides)
    tok = load_run_tokenizer(cfg)
    check_vocab(cfg.model.vocab_size, tok)
    t0 = time.perf_counter()
    meta = prepare(cfg.data, tok, args.out, seq_len=cfg.train.seq_len, overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    rows = sum(s["rows"] for s in meta["sources"])
    for s in meta["sources"]:
        print(f"{s['label']}: {s['rows']:,} rows of {meta['seq_len']} ({s['stats'].get('documents', 0):,} documents, "
              f"{s['stats'].get('tokens', 0):,} tokens)")
    print(f"wrote {args.out}: {rows:,} rows, {rows * meta['seq_len']:,} positions in {seconds:.1f} s "
          f"({meta['tokenizer']['kind']} tokenizer, {meta['tokenizer']['vocab_size']} ids); train with "
          f"--set data.prepared={args.out}")
    return 0


def run_stats(args) -> int:
    # lazy: keeps `jaxlm --help` fast (as above)
    from jaxlm.data.sources import BAD_RECORDS
    from jaxlm.data.stats import pass_stats
    from jaxlm.tokenizer import check_vocab, load_tokenizer

    cfg = load_run_config(args.config, args.overrides)
    data = cfg.data
    tok = load_tokenizer(data.tokenizer, data.tokenizer_kind)
    check_vocab(cfg.model.vocab_size, tok)
    seq_len = args.seq_len or cfg.model.max_context
    srcs = data.sources if args.split == "train" else data.validation
    st = pass_stats(data, tok, srcs, seq_len=seq_len, batch_size=args.batch_size, max_batches=args.max_batches)
    drops = {k: v for k, v in sorted(st.items()) if k.startswith("dropped_") or k in BAD_RECORDS
             or k == "truncated_tokens"}
    if not st.get("documents", 0):
        why = ", ".join(f"{k} {v:,}" for k, v in drops.items()) or "the files hold no text"
        raise JaxlmError(f"no documents kept from {', '.join(str(s.path) for s in srcs)} (dropped / skipped: {why}); "
                         f"fix the data (UTF-8 text, JSONL or Parquet) or loosen data.filters")
    print(f"tokenizer: {data.tokenizer} ({tok.kind}, {tok.vocab_size} ids; model vocab {cfg.model.vocab_size})")
    print(f"{args.split} sources: {', '.join(f'{s.label} ({s.path})' for s in srcs)}; mode {data.mode}, "
          f"seq_len {seq_len}, filters {data.filters.preset} {data.filters.resolved()}")
    if len(srcs) > 1:
        for label, c in st["per_source"].items():
            print(f"  {label}: {c.get('documents', 0):,} documents, {c.get('tokens', 0):,} tokens")
    print(f"documents kept: {st.get('documents', 0):,}")
    print(f"tokens kept (with bos/eos): {st.get('tokens', 0):,}")
    print("dropped / skipped: " + (", ".join(f"{k} {v:,}" for k, v in drops.items()) or "none"))
    pad = 1 - st["input_tokens"] / max(st["positions"], 1)
    print(f"batches {st['batches']:,} of {args.batch_size}x{seq_len}: {st['input_tokens']:,} input tokens, "
          f"{pad:.1%} padding, {st['loss_tokens']:,} loss tokens")
    print(f"pipeline throughput: {st['tokens_per_s']:,.0f} tokens/s ({st['seconds']:.2f} s, read + filter + "
          f"tokenize + pack)")
    return 0
