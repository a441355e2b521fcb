"""`jaxlm generate --ckpt DIR --prompt TEXT`: continue a prompt, streaming tokens to stdout.

Several --prompt flags decode as one batch (printed when done). --interactive reads prompts
from stdin, one per line, until end of input. --chat talks to an instruct model through its chat
template, keeping the history (jaxlm/cli/chat.py).
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
    p.set_defaults(func=run)


def add_sampling_args(p) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=100, help="tokens to generate per prompt (default 100)")
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

    if not args.prompt and not args.interactive and not args.chat:
        raise JaxlmError("give --prompt TEXT (repeatable), --interactive or --chat")
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
