"""Train a sentencepiece BPE tokenizer with byte fallback, the way LLaMA-2's was trained.

Settings follow LLaMA-2's tokenizer.model: BPE, byte fallback (every unseen character becomes
<0xNN> byte pieces, so any UTF-8 text round-trips), digits split, no normalisation and no
whitespace collapsing (decode(encode(x)) == x), a dummy-prefix space. Ids: unk 0, bos 1, eos 2,
pad 3 (LLaMA-2 has no pad piece; we add one so padded batches have a proper id).
Training is single-threaded over lines in a fixed order, so the same files give the same model bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from jaxlm.assets import resolve_path
from jaxlm.errors import JaxlmError
from jaxlm.tokenizer.spm import SentencePieceTokenizer


def text_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (recursively, *.txt) -> sorted file list; error for a missing path."""
    out: list[Path] = []
    for raw in paths:
        p = resolve_path(raw)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*.txt") if f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise JaxlmError(f"training text {raw} does not exist; give text files or folders of *.txt")
    if not out:
        raise JaxlmError(f"no text files found in {', '.join(map(str, paths))}")
    return out


def _lines(files: list[Path]) -> Iterator[str]:
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    line = line.rstrip("\n")
                    if line:
                        yield line
        except UnicodeDecodeError as e:
            raise JaxlmError(f"{f} is not UTF-8 text (byte {e.start}); convert it or leave it out") from None
        except OSError as e:
            raise JaxlmError(f"cannot read {f}: {e.strerror}") from None


def train_sentencepiece(paths: Iterable[str | Path], output_dir: str | Path, vocab_size: int,
                        character_coverage: float = 0.99995, max_sentence_length: int = 16384
                        ) -> SentencePieceTokenizer:
    """Train on the lines of `paths`; write `output_dir/tokenizer.model`; return the tokenizer."""

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size < 2 ** 31:
        raise JaxlmError(f"vocab_size must be an integer in [1, 2**31) (sentencepiece's ids are int32), got "
                         f"{vocab_size!r}")
    files = text_files(paths)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(files), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            character_coverage=character_coverage, max_sentence_length=max_sentence_length,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=1, minloglevel=2)
    except (RuntimeError, ValueError) as e:  # ValueError: an option sentencepiece cannot parse
        detail = str(e).splitlines()[-1].split("] ")[-1][:200] if str(e).strip() else ""
        detail = detail or f"invalid settings (vocab_size {vocab_size}, character_coverage {character_coverage})"
        raise JaxlmError(f"sentencepiece training failed: {detail}; check vocab_size against the text "
                         f"(byte fallback needs 256 + 4 pieces plus one per distinct character)") from None
    tok = SentencePieceTokenizer(buf.getvalue(), source="trained model")
    if tok.vocab_size != vocab_size:
        raise JaxlmError(f"trained {tok.vocab_size} pieces, asked for {vocab_size}; use more text or a smaller "
                         f"vocab")
    output_dir = Path(output_dir)
    tok.save(output_dir)
    return tok
