"""tiktoken-style byte-level BPE (Llama 3): a rank file + a split pattern + special tokens.

A rank file has one `base64(token_bytes) rank` pair per line (Llama 3 ships it as `tokenizer.model`,
OpenAI as `*.tiktoken`). It carries neither the pre-split regex nor the special tokens, so those come
from a sidecar `jaxlm_tokenizer.json` written by `save`, or default to Llama 3's: 256 specials
numbered after the base ranks (`<|begin_of_text|>` = 128000 for the real 128000-rank file).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Sequence

import tiktoken

from jaxlm.errors import JaxlmError
from jaxlm.outputs import write_file
from jaxlm.tokenizer.base import Tokenizer

RANKS_FILE = "tokenizer.model"
SIDECAR_FILE = "jaxlm_tokenizer.json"  # not tokenizer_config.json: that name is HF's

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_NUM_SPECIAL = 256
# tiktoken's Rust core can overflow its stack on huge inputs; Llama 3 slices text the same way.
_MAX_CHARS = 400_000
_MAX_NON_SPACE_RUN = 25_000
_LONG_RUN = re.compile(r"\S{%d,}|\s{%d,}" % (_MAX_NON_SPACE_RUN + 1, _MAX_NON_SPACE_RUN + 1))


def llama3_special_tokens(num_base: int) -> dict[str, int]:
    """Llama 3's 256 special tokens, numbered from `num_base` (128000 for the real rank file)."""
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    names += [f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_NUM_SPECIAL - 5)]
    return {name: num_base + i for i, name in enumerate(names)}


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a rank file; JaxlmError naming the line when it is not one."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as e:
        raise JaxlmError(f"cannot read tokenizer file {path}: {e.strerror}") from None
    ranks = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, TypeError):
            raise JaxlmError(f"{path} line {n} is not `base64-token rank`; give a tiktoken rank file") from None
    if not ranks:
        raise JaxlmError(f"{path} holds no ranks; give a tiktoken rank file")
    return ranks


def looks_like_ranks(path: Path) -> bool:
    """Cheap sniff: the first line of a rank file is ASCII `base64 int`."""
    try:
        with open(path, "rb") as f:
            first = f.readline(512).split()
        return len(first) == 2 and first[1].isdigit() and bool(base64.b64decode(first[0], validate=True))
    except (OSError, ValueError):
        return False


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"

    def __init__(self, ranks: dict[bytes, int], pattern: str = LLAMA3_PATTERN,
                 special_tokens: dict[str, int] | None = None, bos_token: str = "<|begin_of_text|>",
                 eos_token: str = "<|end_of_text|>", pad_token: str | None = None, name: str = "bpe"):
        self._ranks = ranks
        self._specials = dict(special_tokens) if special_tokens is not None else llama3_special_tokens(len(ranks))
        for role, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if tok is not None and tok not in self._specials:
                raise JaxlmError(f"{role} token {tok!r} is not among the special tokens; add it or pick another")
        self._pattern, self._bos_token, self._eos_token, self._pad_token = pattern, bos_token, eos_token, pad_token
        try:
            self._enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=self._specials)
        except ValueError as e:
            raise JaxlmError(f"invalid tiktoken tokenizer: {e}") from None
        # Llama 3 pads with eos when no pad token is named (padding is loss-masked).
        self._pad = self._specials[pad_token] if pad_token else self._specials[eos_token]

    @classmethod
    def from_file(cls, ranks_path: str | Path, config: dict | None = None) -> "TiktokenTokenizer":
        """Rank file + optional sidecar dict (pattern, special_tokens, bos/eos/pad token names)."""
        config = dict(config or {})
        config.pop("kind", None)
        return cls(read_ranks(ranks_path), **config)

    @property
    def encoding(self) -> tiktoken.Encoding:
        return self._enc

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def bos_id(self) -> int:
        return self._specials[self._bos_token]

    @property
    def eos_id(self) -> int:
        return self._specials[self._eos_token]

    @property
    def pad_id(self) -> int:
        return self._pad

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        # Special-token text in documents is encoded as ordinary bytes, never as control ids.
        ids = [self.bos_id] if add_bos else []
        for piece in _slices(text):
            ids.extend(self._enc.encode_ordinary(piece))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int = 1) -> list[list[int]]:
        if any(len(t) > _MAX_NON_SPACE_RUN for t in texts):  # slice long texts one by one
            return [self.encode(t, add_bos, add_eos) for t in texts]
        out = self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
        head, tail = ([self.bos_id] if add_bos else []), ([self.eos_id] if add_eos else [])
        return [head + ids + tail for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def save(self, directory: str | Path) -> list[Path]:

        directory = Path(directory)
        ranks = "".join(f"{base64.b64encode(tok).decode()} {rank}\n"
                        for tok, rank in sorted(self._ranks.items(), key=lambda kv: kv[1]))
        sidecar = json.dumps({"kind": self.kind, "pattern": self._pattern, "special_tokens": self._specials,
                              "bos_token": self._bos_token, "eos_token": self._eos_token,
                              "pad_token": self._pad_token}, indent=1)
        return ([write_file(directory / name, text) for name, text in ((RANKS_FILE, ranks), (SIDECAR_FILE, sidecar))]
                + self._save_hf_config(directory))

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    @property
    def ranks(self) -> dict[bytes, int]:
        return self._ranks

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def bos_token(self) -> str:
        return self._bos_token

    @property
    def eos_token(self) -> str:
        return self._eos_token

    @property
    def pad_token(self) -> str | None:
        return self._pad_token


def _slices(text: str):
    """Cut `text` into pieces tiktoken handles safely (Llama 3's limits: 400k chars per call, runs of
    over 25k space or non-space chars split); ordinary text passes through in one piece."""
    for i in range(0, len(text), _MAX_CHARS):
        chunk = text[i:i + _MAX_CHARS]
        pos = 0
        for m in _LONG_RUN.finditer(chunk):
            yield chunk[pos:m.start()]
            for k in range(m.start(), m.end(), _MAX_NON_SPACE_RUN):
                yield chunk[k:min(k + _MAX_NON_SPACE_RUN, m.end())]
            pos = m.end()
        yield chunk[pos:]
