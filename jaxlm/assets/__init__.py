"""Files shipped inside the package: a small Shakespeare corpus and a tokenizer trained on it.

    corpus/train/*.txt   8 modern-spelling plays (the training text of the default configs)
    corpus/valid/*.txt   2 held-back plays (validation loss, tokenizer round-trip tests)
    tokenizer/tokenizer.model   sentencepiece BPE, 2048 pieces, byte fallback (bos 1, eos 2, pad 3, unk 0)
    chat/script.jinja    a play-script chat template, for `jaxlm generate --chat` on models without one
    prompts/plays.jsonl  8 {"id", "prompt"} lines: the README's batch-generation example (`jaxlm generate --input`)
    curate/noisy/*.txt   negatives for the bundled quality classifier: the OCR'd 1911 Britannica article on
                         Shakespeare (first 137 KB, page markers included) and Macbeth in 1623 Folio spelling

Configs name them with the prefix `bundled:` (e.g. `bundled:corpus/train`, `bundled:tokenizer`),
which resolves inside the installed package, whatever the working directory.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
PREFIX = "bundled:"


def resolve_path(path: str | Path) -> Path:
    """`bundled:x/y` -> <package>/assets/x/y; anything else -> Path(path) with `~` expanded."""
    text = str(path)
    if text.startswith(PREFIX):
        return ASSETS_DIR / text[len(PREFIX):].lstrip("/")
    return Path(text).expanduser()
