"""`load_tokenizer(path)`: find and open the tokenizer files of a file or directory, whatever the kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.tokenizer import hf_json, spm, tiktoken_bpe
from jaxlm.tokenizer.base import Tokenizer

Kind = Literal["auto", "sentencepiece", "tiktoken", "hf"]


def load_tokenizer(path: str | Path, kind: Kind = "auto") -> Tokenizer:
    """Open a tokenizer from a file or a directory holding one.

    File: a sentencepiece `tokenizer.model`, a tiktoken rank file (told apart by content, since
    Llama 3 also names its rank file tokenizer.model) or a Hugging Face `tokenizer.json`.
    Directory: its tokenizer.json (what AutoTokenizer reads first), else its tokenizer.model (plus
    the tiktoken sidecar jaxlm_tokenizer.json when present) or its single *.tiktoken file. A
    tokenizer_config.json beside it (chat template, HF settings) comes with the tokenizer.
    `bundled:tokenizer` is the tokenizer shipped with the package.
    """
    p = resolve_path(path)
    if not p.exists():
        raise JaxlmError(f"tokenizer path {path} does not exist; give a tokenizer.model file or a directory "
                         f"holding one (e.g. bundled:tokenizer)")
    if not p.is_dir() and not p.is_file():  # reading a FIFO would block for ever, a device never end
        raise JaxlmError(f"tokenizer path {path} is not a regular file (a FIFO, socket or device); give a "
                         f"tokenizer.model file or a directory holding one")
    json_file = p / hf_json.FILE_NAME if p.is_dir() else p
    if kind in ("auto", "hf") and json_file.name == hf_json.FILE_NAME and json_file.is_file():
        return hf_json.HFTokenizer.from_dir(json_file.parent)
    if kind == "hf":
        raise JaxlmError(f"no tokenizer.json in {p}; "
                         "give a folder written by a Hugging Face tokenizer's save_pretrained")
    sidecar: dict | None = None
    if p.is_dir():
        if (p / tiktoken_bpe.SIDECAR_FILE).is_file():
            sidecar = _read_sidecar(p / tiktoken_bpe.SIDECAR_FILE)
        candidates = [p / spm.FILE_NAME] + sorted(p.glob("*.tiktoken"))
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise JaxlmError(f"no tokenizer in {p} (looked for tokenizer.json, tokenizer.model and *.tiktoken); "
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
        tok = tiktoken_bpe.TiktokenTokenizer.from_file(p, sidecar)
    elif kind == "sentencepiece":
        tok = spm.SentencePieceTokenizer.from_file(p)
    else:
        raise JaxlmError(f"unknown tokenizer kind {kind!r}; use auto, sentencepiece, tiktoken or hf")
    tok.hf_config = hf_json.read_hf_config(p.parent)
    return tok


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
