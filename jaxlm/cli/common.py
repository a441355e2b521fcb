"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """CONFIG (a YAML path or a shipped config name) and repeatable --set key=value overrides."""
    parser.add_argument("config", nargs=None if required else "?", metavar="CONFIG",
                        help="YAML config path or shipped config name (e.g. openelm_270m)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.num_layers=4 (repeatable)")
