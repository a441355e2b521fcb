"""`jaxlm eval --ckpt DIR --data FILE`: perplexity of a text file under a model (the default).
`jaxlm eval --ckpt DIR --tasks T [T ...]`: lm-evaluation-harness tasks (the optional `eval` extra)."""

from __future__ import annotations

import json
import math
import traceback

from jaxlm import outputs
from jaxlm.assets import resolve_path
from jaxlm.cli.common import positive_int
from jaxlm.errors import JaxlmError


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
    ids = lm.tokenizer.encode_input(text)  # BOS as the tokenizer adds it (transformers' rule)
    ppl, n = lm.scorer.perplexity(ids, args.seq_len, args.batch_size)
    print(f"{args.data}: perplexity {ppl:.4f} over {n:,} tokens "
          f"(loss {math.log(ppl):.4f} nats/token, seq_len {args.seq_len or lm.cfg.max_context - 1})")
    return 0


def run_tasks(args) -> int:
    # lazy: optional dependency (the eval extra); lm-eval takes seconds to import
    import jaxlm.eval  # noqa: F401  (lm-eval installed? a one-line error if not)
    from jaxlm.eval.quiet import held_stderr, quiet_git
    from jaxlm.eval.tasks import evaluate

    # An output that cannot be written (a read-only folder too), or one that would replace an input (the
    # model's files, a task file), fails now, not after the evaluation.
    out = outputs.check_output(args.output, overwrite=True, folder=False, inputs=_inputs(args)) if args.output \
        else None
    with held_stderr(), quiet_git():  # lm-eval's progress bars: shown after success, not before a failure's line
        try:
            results = evaluate(args.ckpt, args.tasks, batch_size=args.batch_size, include_path=args.include_path,
                               num_fewshot=args.num_fewshot, limit=args.limit, log_samples=args.log_samples)
        except Exception as e:  # noqa: BLE001  (classified, else raised as it was)
            failure = _task_failure(e)
            if failure is None:
                raise
            raise failure from None
    from lm_eval.utils import make_table  # lazy: optional dependency (the eval extra)

    print(make_table(results))
    if out is not None:
        keep = {k: results[k] for k in ("results", "configs", "versions", "n-shot", "samples") if k in results}
        outputs.write_file(out, json.dumps(keep, indent=2, default=str))
        print(f"wrote {out}")
    return 0


def _inputs(args) -> list:
    """What --tasks reads: the model (and the folder of its config), task files and --include-path."""
    # lazy: keeps `jaxlm --help` fast (the checkpoint code loads JAX)
    from jaxlm.checkpoint.locate import locate

    paths = [args.ckpt, locate(args.ckpt)[0], *args.tasks, *([args.include_path] if args.include_path else [])]
    return [resolve_path(p) for p in paths]


def _task_failure(e: Exception) -> JaxlmError | None:
    """A failure inside lm-eval's own code (most often a task config it cannot apply, e.g. a doc_to_target
    out of range) as a one-line user error; None for our errors and those the CLI already words."""
    if isinstance(e, (JaxlmError, OSError)):
        return None
    ours = [f for f in traceback.extract_tb(e.__traceback__) if "/lm_eval/" in f.filename or "/jaxlm/" in f.filename]
    if not ours or "/lm_eval/" not in ours[-1].filename:
        return None
    where = f"{ours[-1].filename.rsplit('/lm_eval/', 1)[1]}:{ours[-1].lineno}"
    detail = (str(e).strip().splitlines() or [""])[0][:160]
    return JaxlmError(f"lm-eval failed on the tasks ({type(e).__name__}: {detail}, in lm_eval/{where}); check the "
                      f"task config (doc_to_text, doc_to_target, doc_to_choice, metrics)")
