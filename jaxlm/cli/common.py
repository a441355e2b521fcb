"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from jaxlm import host_malloc


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


# What libtpu logs to fd 2 when it probes for a TPU on a host without one (jax[tpu] installed on a CPU
# or GPU machine, or JAX_PLATFORMS=tpu there): C++ lines around its own failed start.
_LIBTPU_PROBE = ("Failed to find host bounds", "Logging before InitGoogle", "could not determine TPU",
                 "common_lib.cc", "=== Source Location Trace", "libtpu_init_utils", "tfrc/runtime")


def _without_cuda_probe(lines: list[str]) -> list[str]:
    """Drop the traceback that JAX's CUDA plugin (the gpu-aot extra) logs when it finds no GPU: from its
    "Jax plugin configuration error" line to the failed cuInit that ends it. JAX then runs on the CPU."""
    start = next((i for i, line in enumerate(lines) if "Jax plugin configuration error" in line
                  and "xla_cuda" in line), None)
    end = next((i for i, line in enumerate(lines) if start is not None and i > start and "cuInit" in line), None)
    return lines if end is None else lines[:start] + lines[end + 1:]


def start_backend() -> None:
    """Start JAX's backend (commands that run models call this first) with file descriptor 2
    captured: libtpu's probe lines on a host without a TPU are dropped (a failed start becomes the
    CLI's one-line error), every other line is passed on. On a CPU host, malloc is tuned first so
    that XLA's scratch memory is reused between steps (jaxlm.host_malloc)."""
    import jax  # lazy: keeps `jaxlm --help` fast (every command imports this module)

    host_malloc.tune()

    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            jax.devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in _without_cuda_probe(text.splitlines())
                    if line.strip() and not any(p in line for p in _LIBTPU_PROBE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
