"""`jaxlm` console entry point: a thin dispatcher over one module per subcommand.

Each module in COMMANDS defines `register(subparsers)`, which adds its parser and sets
`func`. A JaxlmError anywhere becomes a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxlm.errors import JaxlmError

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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description="Small decoder-only language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except JaxlmError as e:
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
