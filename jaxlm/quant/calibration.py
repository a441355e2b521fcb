"""Calibration tokens for GPTQ: a few fixed-length windows of text, tokenized with the model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data.config import SourceConfig
from jaxlm.data.sources import list_files
from jaxlm.errors import JaxlmError

DEFAULT_SOURCE = "bundled:corpus/train"


def read_texts(source: str | Path) -> str:
    """A .txt file, or every *.txt under a directory (sorted), joined. Read as the data pipeline reads a
    source (`list_files`): regular files only, so a FIFO cannot hang the run."""
    p = resolve_path(source)
    files = [f for f in list_files(SourceConfig(path=str(p))) if f.suffix == ".txt" or f == p] if p.exists() else []
    if not files:
        raise JaxlmError(f"no calibration text at {source}; give a .txt file or a directory of .txt files")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def calibration_batches(tokenizer, source: str | Path, num_batches: int, batch_size: int, seq_len: int,
                        seed: int = 0) -> list[np.ndarray]:
    """num_batches arrays (batch_size, seq_len) int32 of windows at random offsets into the tokenized text."""
    ids = np.asarray(tokenizer.encode(read_texts(source)), np.int32)
    if len(ids) < seq_len + 1:
        raise JaxlmError(f"calibration text has {len(ids)} tokens, fewer than calib_seq_len {seq_len}; "
                         f"give more text or a shorter calib_seq_len")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - seq_len, (num_batches, batch_size))
    return [np.stack([ids[s:s + seq_len] for s in row]) for row in starts]
