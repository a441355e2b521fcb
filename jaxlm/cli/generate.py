"""`jaxlm generate --ckpt DIR --prompt TEXT`: continue a prompt, streaming tokens to stdout.

Several --prompt flags decode as one batch (printed when done). --interactive reads prompts
from stdin, one per line, until end of input. --chat talks to an instruct model through its chat
template, keeping the history (jaxlm/cli/chat.py). --input FILE --output FILE generates for a JSONL
file of prompts through the continuous-batching ServingEngine, resumably (jaxlm/serving/batch.py).
"""

from __future__ import annotations

import sys

from jaxlm.cli.chat import add_chat_args, read_template, run_chat
from jaxlm.cli.common import positive_int
from jaxlm.errors import JaxlmError


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a model dir, run dir or checkpoint")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="model dir, run dir or RUN_DIR/checkpoints/<step>")
    p.add_argument("--prompt", action="append", default=[], help="text to continue (repeat for a batch)")
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line")
    add_chat_args(p)
    add_sampling_args(p)
    p.add_argument("--input", metavar="FILE", default=None,
                   help='batch mode: a JSONL file of {"id", "prompt"} or {"id", "messages"} lines (needs --output)')
    p.add_argument("--output", metavar="FILE", default=None,
                   help='batch mode: JSONL of {"id", "text", "tokens", "finish_reason"}, written as it goes; '
                        "a rerun resumes it")
    p.add_argument("--n", type=positive_int, default=1, help="batch mode: completions per input line (default 1)")
    p.add_argument("--max-slots", type=positive_int, default=8, help="batch mode: requests decoded together")
    p.set_defaults(func=run)


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=100,
                   help="tokens to generate per prompt (default 100)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--cache-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "int8"],
                   help="KV cache storage (auto = the model's compute dtype)")


def sampling_kwargs(args) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def run(args) -> int:
    # lazy: keeps `jaxlm --help` fast (jaxlm.inference loads JAX)
    from jaxlm.inference import SamplingParams, load

    if args.input is not None or args.output is not None:
        return run_batch(args)
    if args.n != 1:
        raise JaxlmError("--n needs --input and --output (batch mode)")
    if not args.prompt and not args.interactive and not args.chat:
        raise JaxlmError("give --prompt TEXT (repeatable), --interactive, --chat, or --input FILE --output FILE")
    if not args.chat and (args.system is not None or args.chat_template is not None):
        raise JaxlmError("--system and --chat-template need --chat")
    SamplingParams(**sampling_kwargs(args))  # reject bad knobs before loading the model
    if args.chat:
        read_template(args.chat_template)  # a bad path fails before the model loads
        return run_chat(load(args.ckpt, cache_dtype=args.cache_dtype), args, sampling_kwargs(args))
    lm = load(args.ckpt, cache_dtype=args.cache_dtype)
    kw = sampling_kwargs(args)
    if len(args.prompt) > 1:
        for prompt, text in zip(args.prompt, lm.generate(args.prompt, args.max_new_tokens, **kw)):
            print(f"{prompt}{text}\n")
    elif args.prompt:
        stream(lm, args.prompt[0], args.max_new_tokens, kw)
    if args.interactive:
        print("enter a prompt per line; end with Ctrl-D", file=sys.stderr)
        for line in sys.stdin:
            prompt = line.rstrip("\n")
            if not prompt.strip():
                continue
            try:
                stream(lm, prompt, args.max_new_tokens, kw)
            except JaxlmError as e:  # one bad prompt should not end the session
                print(f"error: {e}", file=sys.stderr)
    return 0


def stream(lm, prompt: str, max_new_tokens: int, kw: dict) -> None:
    print(prompt, end="", flush=True)
    for piece in lm.stream(prompt, max_new_tokens, **kw):
        print(piece, end="", flush=True)
    print()


def run_batch(args) -> int:
    """--input/--output: every line checked first (a bad one: one error naming it, nothing written)."""
    # lazy: keeps `jaxlm --help` fast (jaxlm.inference loads JAX)
    from tqdm import tqdm

    from jaxlm import outputs
    from jaxlm.assets import resolve_path
    from jaxlm.inference import SamplingParams, load
    from jaxlm.inference.chat import stop_ids
    from jaxlm.serving import batch
    from jaxlm.serving.engine import RequestParams, ServingEngine

    if args.input is None or args.output is None:
        raise JaxlmError("batch mode needs both --input FILE and --output FILE")
    if args.prompt or args.interactive:
        raise JaxlmError("--input replaces --prompt and --interactive; give one or the other")
    if args.repetition_penalty != 1.0:
        raise JaxlmError("--repetition-penalty is not supported with --input (the serving engine has no penalty)")
    if args.chat_template is not None:
        raise JaxlmError("--chat-template is not supported with --input: the model's own template is used")
    if args.system is not None and not args.chat:
        raise JaxlmError("--system needs --chat (it opens the conversation of each \"prompt\" line)")
    SamplingParams(**sampling_kwargs(args))  # reject bad knobs before loading the model
    outputs.refuse_overlap(args.output, [resolve_path(args.input), args.ckpt])
    lm = load(args.ckpt, cache_dtype=args.cache_dtype)
    items = batch.read_requests(args.input, lm, chat=args.chat, system=args.system, n=args.n,
                                max_new_tokens=args.max_new_tokens, max_context=lm.cfg.max_context)
    chat_stops = tuple(stop_ids(lm.tokenizer, lm.generation_config)) if any(it.chat for it in items) else ()

    def params_of(item):
        return RequestParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                             top_k=args.top_k, seed=batch.seed_for(args.seed, item),
                             stop_token_ids=chat_stops if item.chat else ())

    log = batch.OutputLog(args.output)
    engine = ServingEngine(lm, max_slots=args.max_slots, cache_dtype=args.cache_dtype)
    todo = sum((it.key, it.index) not in log.done for it in items)
    try:
        with tqdm(total=todo, unit="req", desc="generate", file=sys.stderr, mininterval=1.0) as bar:
            done = batch.run(engine, items, log, params_of, args.n, progress=bar)
    finally:
        log.close()
    print(f"{args.output}: {done['written']} written, {done['skipped']} already done, {done['tokens']} tokens in "
          f"{done['seconds']:.1f} s ({done['tokens'] / max(done['seconds'], 1e-9):.1f} tok/s)", file=sys.stderr)
    if done["failed"]:
        print(f"{done['failed']} requests failed and were not written; rerun the command to retry them",
              file=sys.stderr)
        return 1
    return 0
