"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors: `jaxlm eval: error: ...; see jaxlm eval --help` (exit 2)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """CONFIG (a YAML path or a shipped config name) and repeatable --set key=value overrides."""
    parser.add_argument("config", nargs=None if required else "?", metavar="CONFIG",
                        help="YAML config path or shipped config name (e.g. openelm_270m)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.num_layers=4 (repeatable)")
