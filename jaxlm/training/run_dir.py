"""Files of a run directory besides checkpoints: config.yaml and the tokenizer (written atomically)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from jaxlm.config import to_dict
from jaxlm.outputs import write_file
from jaxlm.tokenizer import load_tokenizer

DEFAULT_TOKENIZER = "bundled:tokenizer"


def tokenizer_path(run_cfg) -> str:
    return run_cfg.data.tokenizer or DEFAULT_TOKENIZER


def load_run_tokenizer(run_cfg):
    """The tokenizer that run_cfg.data names, read as data.tokenizer_kind says (as `jaxlm data` reads it)."""
    return load_tokenizer(tokenizer_path(run_cfg), run_cfg.data.tokenizer_kind)


def write_run_files(run_dir: Path, run_cfg, tokenizer) -> None:
    """RUN_DIR/config.yaml and the tokenizer's files; each written to a temporary name, then renamed."""
    write_file(run_dir / "config.yaml", yaml.safe_dump(to_dict(run_cfg), sort_keys=False))
    if tokenizer is not None and hasattr(tokenizer, "save"):
        with tempfile.TemporaryDirectory() as tmp:  # the tokenizer's own bytes, then one atomic write each
            for f in tokenizer.save(tmp):
                write_file(run_dir / Path(f).name, Path(f).read_bytes())
