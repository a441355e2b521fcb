"""`jaxlm eval --ckpt DIR --data FILE`: perplexity of a text file under a model (the default).
`jaxlm eval --ckpt DIR --tasks T [T ...]`: lm-evaluation-harness tasks (the optional `eval` extra)."""

from __future__ import annotations

import json
import math

from jaxlm.cli.common import positive_int
from jaxlm import outputs
from jaxlm.assets import resolve_path


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a text file, or lm-evaluation-harness tasks, under a model")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="model dir, run dir or RUN_DIR/checkpoints/<step>")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", metavar="FILE", help="UTF-8 text file for perplexity (bundled:corpus/valid/... works)")
    what.add_argument("--tasks", nargs="+", metavar="TASK",
                      help="lm-eval task names or task YAML files (bundled:eval/shakespeare_cloze.yaml); needs .[eval]")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="perplexity: tokens per scoring window (default: the model's context - 1)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="windows (perplexity) or requests (tasks) per forward pass (default 8)")
    p.add_argument("--include-path", metavar="DIR", default=None, help="tasks: a folder of local lm-eval task YAMLs")
    p.add_argument("--num-fewshot", type=int, default=None, help="tasks: few-shot examples (default: the task's)")
    p.add_argument("--limit", type=positive_int, default=None, help="tasks: at most this many documents per task")
    p.add_argument("--output", metavar="FILE", default=None, help="tasks: write the results as JSON to FILE")
    p.add_argument("--log-samples", action="store_true", help="tasks: include every request and response in --output")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.tasks:
        return run_tasks(args)
    # lazy: keeps `jaxlm --help` fast (jaxlm.inference loads JAX)
    from jaxlm.inference import load
    from jaxlm.inference.api import read_text

    text = read_text(resolve_path(args.data))  # a bad path fails before the model loads
    lm = load(args.ckpt)
    ids = lm.tokenizer.encode(text, add_bos=lm.tokenizer.bos_id >= 0)
    ppl, n = lm.scorer.perplexity(ids, args.seq_len, args.batch_size)
    print(f"{args.data}: perplexity {ppl:.4f} over {n:,} tokens "
          f"(loss {math.log(ppl):.4f} nats/token, seq_len {args.seq_len or lm.cfg.max_context - 1})")
    return 0


def run_tasks(args) -> int:
    # lazy: optional dependency (the eval extra); lm-eval takes seconds to import
    import jaxlm.eval  # noqa: F401  (lm-eval installed? a one-line error if not)
    from jaxlm.eval.tasks import evaluate

    out = outputs.check_output(args.output, overwrite=True, folder=False) if args.output else None
    results = evaluate(args.ckpt, args.tasks, batch_size=args.batch_size, include_path=args.include_path,
                       num_fewshot=args.num_fewshot, limit=args.limit, log_samples=args.log_samples)
    from lm_eval.utils import make_table  # lazy: optional dependency (the eval extra)

    print(make_table(results))
    if out is not None:
        keep = {k: results[k] for k in ("results", "configs", "versions", "n-shot", "samples") if k in results}
        outputs.write_file(out, json.dumps(keep, indent=2, default=str))
        print(f"wrote {out}")
    return 0
