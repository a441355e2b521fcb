"""`jaxlm` console entry point: a thin dispatcher over one module per subcommand.

Each module in COMMANDS defines `register(subparsers)`, which adds its parser and sets
`func`. Every failure on bad input (a JaxlmError, or a library's error on a bad file or a full
disk: `jaxlm.errors.user_message`) becomes one line on stderr and exit status 2; any other
exception is a bug, one line and exit status 1. `JAXLM_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading

from jaxlm.cli.common import Parser, start_backend
from jaxlm.errors import debug, user_message

COMMANDS = [
    "jaxlm.cli.model_info",
    "jaxlm.cli.quantize",
    "jaxlm.cli.lora",
    "jaxlm.cli.generate",
    "jaxlm.cli.eval",
    "jaxlm.cli.tokenizer",
    "jaxlm.cli.data",
    "jaxlm.cli.train",
    "jaxlm.cli.plot",
    "jaxlm.cli.convert",
    "jaxlm.cli.compile",
    "jaxlm.cli.serve",
]


def build_parser() -> Parser:
    parser = Parser(prog="jaxlm", description="Small decoder-only language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


# Commands that run a model start JAX's backend first, through start_backend (its start-up noise filtered);
# train does it itself, after its config is read and jax.distributed is initialised.
NEEDS_BACKEND = ("generate", "eval", "quantize", "lora", "convert", "serve")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in NEEDS_BACKEND:
            start_backend()
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if debug():
            raise
        message = user_message(e)
        if message is None:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"jaxlm {args.command}: internal error: {type(e).__name__}: {first}; rerun with JAXLM_DEBUG=1 "
                  f"for the traceback and report it", file=sys.stderr)
            return 1
        print(f"jaxlm {args.command}: error: {message}", file=sys.stderr)
        return 2


def cli() -> None:
    """The `jaxlm` console script. Library threads stay quiet (their failures reach the main thread
    as exceptions, mapped to one line by `main`); after a failure the process ends at once, so that
    no background thread of Orbax or tensorstore prints at interpreter exit."""
    if not debug():
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda args: None  # e.g. tensorstore callbacks into Orbax's closed event loop
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        # "Task exception was never retrieved": Orbax/tensorstore futures of a read that already failed
        # (the failure reaches main as an exception and becomes the one line)
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        workers = sys.modules.get("jaxlm.data.workers")  # loaded only if a data pipeline ran
        if workers is not None:  # os._exit skips atexit: stop tokenizer workers now (no "leaked semaphore")
            workers.shutdown()
        if not debug():  # the one line is out; a dying library thread may still write
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(code)
    sys.exit(0)


if __name__ == "__main__":
    cli()
