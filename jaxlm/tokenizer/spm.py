"""Sentencepiece adapter: any `tokenizer.model` (LLaMA-2's, OpenELM's, Phi-3's, or one trained here)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from jaxlm.errors import JaxlmError
from jaxlm.outputs import write_file
from jaxlm.tokenizer.base import Tokenizer

FILE_NAME = "tokenizer.model"


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise JaxlmError(f"{source} is not a sentencepiece model ({str(e).splitlines()[0][:120]}); give a "
                             f"tokenizer.model written by sentencepiece or `jaxlm tokenizer train`") from None
        self._bos, self._eos = self._sp.bos_id(), self._sp.eos_id()
        pad, unk = self._sp.pad_id(), self._sp.unk_id()
        # LLaMA-2's model has no pad piece (pad_id -1): pad with unk, which the loss mask hides anyway.
        self._pad = pad if pad >= 0 else (unk if unk >= 0 else self._eos)
        self._controls = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())
                          if self._sp.is_control(i)}

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceTokenizer":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise JaxlmError(f"cannot read tokenizer file {path}: {e.strerror}") from None
        return cls(data, source=str(path))

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        return self._sp

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    def _check_specials(self, add_bos: bool, add_eos: bool) -> None:
        if (add_bos and self._bos < 0) or (add_eos and self._eos < 0):
            raise JaxlmError("this sentencepiece model has no bos/eos piece; retrain it with bos_id/eos_id set")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        self._check_specials(add_bos, add_eos)
        return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False,
                     num_threads: int = 1) -> list[list[int]]:
        self._check_specials(add_bos, add_eos)
        return self._sp.encode(list(texts), add_bos=add_bos, add_eos=add_eos, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def save(self, directory: str | Path) -> list[Path]:

        return [write_file(Path(directory) / FILE_NAME, self._proto)] + self._save_hf_config(Path(directory))

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._controls)

    @property
    def model_proto(self) -> bytes:
        return self._proto
