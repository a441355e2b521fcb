"""The one tokenizer interface every adapter implements, and the model/tokenizer vocab check."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

from jaxlm.errors import ConfigError


class Tokenizer(abc.ABC):
    """Text <-> token ids. Ids are plain Python ints in [0, vocab_size)."""

    kind: str  # "sentencepiece" | "tiktoken"

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

    @abc.abstractmethod
    def save(self, directory: str | Path) -> list[Path]:
        """Write the files that `load_tokenizer(directory)` reads back; returns their paths."""

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
