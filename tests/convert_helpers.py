"""Shared by the conversion tests: real text as token ids, and tiny jaxlm models saved to disk."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 2048  # the bundled tokenizer's


def text_batch(rows: int = 2, length: int = 48) -> np.ndarray:
    """(rows, length) int32 ids of bundled Shakespeare text, from the bundled tokenizer."""
    from jaxlm.assets import resolve_path
    from jaxlm.tokenizer import load_tokenizer

    tok = load_tokenizer("bundled:tokenizer")
    corpus = resolve_path("bundled:corpus")
    text = " ".join(p.read_text() for p in sorted(corpus.rglob("*.txt"))[:1])
    ids = tok.encode(text[:20000])
    return np.array([ids[i * 500: i * 500 + length] for i in range(rows)], np.int32)


def save_jaxlm_model(path, preset: str, overrides: list[str], seed: int = 0):
    """Build a random model from a shipped config + overrides and save it (with the bundled tokenizer)."""
    import tempfile

    from jaxlm.checkpoint import save_model
    from jaxlm.config import load_run_config
    from jaxlm.model import build_model
    from jaxlm.tokenizer import load_tokenizer

    run_cfg = load_run_config(preset, overrides)
    model = build_model(run_cfg.model, seed=seed)
    with tempfile.TemporaryDirectory() as tok_dir:
        files = load_tokenizer("bundled:tokenizer").save(tok_dir)
        save_model(path, run_cfg, model, extra_files=files)
    return run_cfg, model
