"""`load_tokenizer(path)`: find and open the tokenizer files of a file or directory, whatever the kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.tokenizer import spm, tiktoken_bpe
from jaxlm.tokenizer.base import Tokenizer

Kind = Literal["auto", "sentencepiece", "tiktoken"]


def load_tokenizer(path: str | Path, kind: Kind = "auto") -> Tokenizer:
    """Open a tokenizer from a file or a directory holding one.

    File: a sentencepiece `tokenizer.model` or a tiktoken rank file (told apart by content, since
    Llama 3 also names its rank file tokenizer.model). Directory: its tokenizer.model (plus the
    tiktoken sidecar jaxlm_tokenizer.json when present) or its single *.tiktoken file.
    `bundled:tokenizer` is the tokenizer shipped with the package.
    """
    p = resolve_path(path)
    if not p.exists():
        raise JaxlmError(f"tokenizer path {path} does not exist; give a tokenizer.model file or a directory "
                         f"holding one (e.g. bundled:tokenizer)")
    sidecar: dict | None = None
    if p.is_dir():
        if (p / tiktoken_bpe.SIDECAR_FILE).is_file():
            sidecar = _read_sidecar(p / tiktoken_bpe.SIDECAR_FILE)
        candidates = [p / spm.FILE_NAME] + sorted(p.glob("*.tiktoken"))
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise JaxlmError(f"no tokenizer in {p} (looked for tokenizer.model and *.tiktoken); "
                             f"train one with `jaxlm tokenizer train` or point at the file")
        p = found[0]
    elif (p.parent / tiktoken_bpe.SIDECAR_FILE).is_file():
        sidecar = _read_sidecar(p.parent / tiktoken_bpe.SIDECAR_FILE)
    if kind == "auto":
        if sidecar is not None and sidecar.get("kind") == "tiktoken":
            kind = "tiktoken"
        else:
            kind = "tiktoken" if tiktoken_bpe.looks_like_ranks(p) else "sentencepiece"
    if kind == "tiktoken":
        return tiktoken_bpe.TiktokenTokenizer.from_file(p, sidecar)
    if kind == "sentencepiece":
        return spm.SentencePieceTokenizer.from_file(p)
    raise JaxlmError(f"unknown tokenizer kind {kind!r}; use auto, sentencepiece or tiktoken")


def _read_sidecar(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxlmError(f"cannot read tokenizer config {path}: {e}; fix or delete it") from None
    if not isinstance(data, dict):
        raise JaxlmError(f"tokenizer config {path} must be a JSON object")
    allowed = {"kind", "pattern", "special_tokens", "bos_token", "eos_token", "pad_token", "name"}
    unknown = set(data) - allowed
    if unknown:
        raise JaxlmError(f"tokenizer config {path} has unknown keys {sorted(unknown)}; valid: {sorted(allowed)}")
    return data
