"""`jaxlm eval --ckpt DIR --data FILE`: perplexity of a text file under a model."""

from __future__ import annotations

from jaxlm.cli.common import positive_int


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a text file under a model dir, run dir or checkpoint")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="model dir, run dir or RUN_DIR/checkpoints/<step>")
    p.add_argument("--data", required=True, metavar="FILE", help="UTF-8 text file (bundled:corpus/valid/... works)")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="tokens per scoring window (default: the model's context - 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    import math

    from jaxlm.assets import resolve_path
    from jaxlm.inference import load
    from jaxlm.inference.api import read_text

    text = read_text(resolve_path(args.data))  # a bad path fails before the model loads
    lm = load(args.ckpt)
    ids = lm.tokenizer.encode(text, add_bos=lm.tokenizer.bos_id >= 0)
    ppl, n = lm.scorer.perplexity(ids, args.seq_len, args.batch_size)
    print(f"{args.data}: perplexity {ppl:.4f} over {n:,} tokens "
          f"(loss {math.log(ppl):.4f} nats/token, seq_len {args.seq_len or lm.cfg.max_context - 1})")
    return 0
