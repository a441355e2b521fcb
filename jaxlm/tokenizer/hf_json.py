"""Hugging Face `tokenizers` adapter: a `tokenizer.json` (what `save_pretrained` writes for a fast
tokenizer, e.g. Llama 3's byte-level BPE), read by the maintained `tokenizers` library.

bos / eos / pad come from tokenizer_config.json (or special_tokens_map.json, then the ids in
generation_config.json), as transformers' AutoTokenizer reads them. Encoding matches
`AutoTokenizer(text, add_special_tokens=False)`: the tokenizer.json's normalizer, pre-tokenizer and
model, special-token strings in the text included; bos / eos are added only by the flags, never by
the file's post-processor. Decoding matches `AutoTokenizer.decode` (special tokens kept, no
clean-up of spaces, which transformers 5 also skips for BPE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from jaxlm.errors import JaxlmError
from jaxlm.outputs import write_file
from jaxlm.tokenizer.base import HF_CONFIG_FILE, Tokenizer

FILE_NAME = "tokenizer.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 may save the template on its own
GENERATION_FILE = "generation_config.json"


def token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def first_id(value) -> int | None:
    """An id from generation_config.json (an int, or a list whose first entry is used)."""
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) else None


def read_json(path: Path) -> dict:
    """A JSON object file, or {} when absent; a damaged one is a JaxlmError naming it."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxlmError(f"cannot read {path}: {e}; fix or delete it") from None
    if not isinstance(data, dict):
        raise JaxlmError(f"{path} must hold a JSON object")
    return data


def read_hf_config(directory: Path) -> dict:
    """tokenizer_config.json of a folder, with a separate chat_template.jinja folded in."""
    config = read_json(directory / HF_CONFIG_FILE)
    if "chat_template" not in config and (directory / CHAT_TEMPLATE_FILE).is_file():
        config["chat_template"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    return config


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, tokenizer_json: str, config: dict | None = None, special_map: dict | None = None,
                 generation: dict | None = None, source: str = "<string>"):
        # lazy: the tokenizers library loads only for tokenizer.json files, not with `import jaxlm.tokenizer`
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tok = RustTokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library raises plain Exceptions on a bad file
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise JaxlmError(f"{source} is not a tokenizers tokenizer.json ({detail}); give the file "
                             f"`save_pretrained` wrote") from None
        self._json, self.hf_config, self._special_map = tokenizer_json, dict(config or {}), dict(special_map or {})
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        generation = generation or {}
        self._bos = self._role_id("bos_token", first_id(generation.get("bos_token_id")), source)
        self._eos = self._role_id("eos_token", first_id(generation.get("eos_token_id")), source)
        pad = self._role_id("pad_token", None, source)
        # No pad token (Llama 3): pad with eos, which the loss mask hides anyway.
        self._pad = pad if pad >= 0 else (self._eos if self._eos >= 0 else 0)

    def _role_id(self, role: str, fallback: int | None, source: str) -> int:
        text = token_text(self.hf_config.get(role, self._special_map.get(role)))
        if text is None:
            return fallback if fallback is not None else -1
        token = self._tok.token_to_id(text)
        if token is None:
            raise JaxlmError(f"{role} {text!r} of {source} is not in its tokenizer.json vocabulary; fix "
                             f"tokenizer_config.json")
        return token

    @classmethod
    def from_dir(cls, directory: str | Path) -> "HFTokenizer":
        directory = Path(directory)
        path = directory / FILE_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise JaxlmError(f"cannot read tokenizer file {path}: {e}") from None
        return cls(text, read_hf_config(directory), read_json(directory / SPECIAL_MAP_FILE),
                   read_json(directory / GENERATION_FILE), source=str(path))

    @property
    def tokenizer_json(self) -> str:
        """The tokenizer.json text, as read."""
        return self._json

    @property
    def backend(self):
        """The `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    @property
    def special_tokens_map(self) -> dict[str, str]:
        roles = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        texts = {r: token_text(self.hf_config.get(r, self._special_map.get(r))) for r in roles}
        return {r: t for r, t in texts.items() if t is not None}

    @property
    def adds_bos(self) -> bool:
        # transformers (5.x) reads a tokenizer.json's post-processor, whatever tokenizer_config.json says
        ids = self._tok.encode("a", add_special_tokens=True).ids
        return self._bos >= 0 and bool(ids) and ids[0] == self._bos

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if (add_bos and self._bos < 0) or (add_eos and self._eos < 0):
            raise JaxlmError("this tokenizer has no bos/eos token; set bos_token / eos_token in tokenizer_config.json")
        return ([self._bos] if add_bos else []) + ids + ([self._eos] if add_eos else [])

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, add_bos, add_eos) for e in out]

    def encode_special(self, text: str) -> list[int]:
        return self.encode(text)  # tokenizers already reads special-token strings as their ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | Path) -> list[Path]:

        directory = Path(directory)
        files = [write_file(directory / FILE_NAME, self._json)] + self._save_hf_config(directory)
        if self._special_map:
            files.append(write_file(directory / SPECIAL_MAP_FILE, json.dumps(self._special_map, indent=2)))
        return files
