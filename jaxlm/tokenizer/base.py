"""The one tokenizer interface every adapter implements, and the model/tokenizer vocab check."""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

from jaxlm.errors import ConfigError
from jaxlm.outputs import write_file

HF_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer(abc.ABC):
    """Text <-> token ids. Ids are plain Python ints in [0, vocab_size)."""

    kind: str  # "sentencepiece" | "tiktoken" | "hf"
    # The tokenizer_config.json that came with the tokenizer ({} if none): its chat template and
    # settings travel with it (`save` writes it back). Set per instance by the loader.
    hf_config: Mapping = MappingProxyType({})

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the smallest valid model vocab_size)."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Id written at padded positions (they are masked out of the loss, so any id is safe)."""

    @abc.abstractmethod
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    @property
    def adds_bos(self) -> bool:
        """Whether the tokenizer's own rule puts BOS before a text, as transformers' `tokenizer(text)` does:
        tokenizer_config.json's `add_bos_token` (default true, as for Llama's sentencepiece tokenizer).
        A tokenizer.json follows its post-processor instead (HFTokenizer)."""
        return self.bos_id >= 0 and self.hf_config.get("add_bos_token", True) is not False

    def encode_input(self, text: str, add_bos: bool | None = None) -> list[int]:
        """A text's ids as model input, as `tokenizer(text)` in transformers gives them: BOS by the
        tokenizer's own rule (`adds_bos`), or as `add_bos` says when given."""
        return self.encode(text, add_bos=self.adds_bos if add_bos is None else add_bos and self.bos_id >= 0)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by text (bos, eos, chat markers such as <|eot_id|>)."""
        return {}

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens as transformers hands them to a chat template (bos_token, eos_token, ...)."""
        names = {i: t for t, i in self.special_tokens.items()}
        return {role: names[i] for role, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id)) if i in names}

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of tokenizer_config.json (its "default" one when it names several)."""
        template = self.hf_config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}], as transformers saves several
            template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
        return template if isinstance(template, str) and template else None

    def encode_special(self, text: str) -> list[int]:
        """Encode text in which special-token strings stand for their ids (a rendered chat template),
        as transformers encodes `apply_chat_template`'s text; the rest is encoded as ordinary text."""
        specials = self.special_tokens
        if not specials:
            return self.encode(text)
        if getattr(self, "_special_pattern", None) is None:  # built once: the special tokens never change
            self._special_pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
        pattern = self._special_pattern
        ids, pos = [], 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                ids += self.encode(text[pos:m.start()])
            ids.append(specials[m.group()])
            pos = m.end()
        return ids + (self.encode(text[pos:]) if pos < len(text) else [])

    @abc.abstractmethod
    def save(self, directory: str | Path) -> list[Path]:
        """Write the files that `load_tokenizer(directory)` reads back; returns their paths."""

    def _save_hf_config(self, directory: Path) -> list[Path]:
        """tokenizer_config.json (the chat template with it), when the tokenizer came with one."""
        if not self.hf_config:
            return []

        return [write_file(Path(directory) / HF_CONFIG_FILE,
                           json.dumps(dict(self.hf_config), indent=2, ensure_ascii=False))]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, "
                f"pad={self.pad_id})")


def check_vocab(model_vocab_size: int, tokenizer: Tokenizer, pad_multiple: int = 128) -> None:
    """Raise ConfigError unless the model's vocab fits the tokenizer's.

    Valid: equal sizes, or a model vocab padded by less than `pad_multiple` rows (Phi-3: 32064
    embedding rows for the 32000 pieces of its tokenizer.model plus 11 added tokens). A smaller model
    vocab would index out of range mid-run; a much larger one almost always means the wrong tokenizer.
    """
    tok = tokenizer.vocab_size
    if tok <= model_vocab_size < tok + pad_multiple:
        return
    raise ConfigError(
        f"model vocab_size {model_vocab_size} does not match the tokenizer's {tok} ids ({tokenizer!r}); "
        f"set model.vocab_size={tok} (or pad it by fewer than {pad_multiple} rows) or choose the tokenizer "
        f"the model was trained with")
