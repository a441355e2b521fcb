"""Decontamination: word n-gram overlap between training documents and evaluation text.

The index holds the hashes of every `ngram`-word n-gram (13 by default, as GPT-3 and Llama 3 use) of
the evaluation items: each string field of each record of the lm-eval task files (and, for records
with several, all of them joined: a prompt + its target is one line of the source text), every
document of data.validation, and any text file given. Items shorter than `ngram` words but at least
`min_item_words` long match as a whole (a short cloze context would otherwise never match). Words are
`ngrams.words` (lower-cased, punctuation ignored). A document's overlaps are its n-grams found in the
index, merged into character spans of the document and labelled with the file they came from.
Memory: the index is 16 bytes per distinct eval n-gram (a few MB for a validation set of millions of words).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxlm.assets import resolve_path
from jaxlm.data.curate import ngrams
from jaxlm.errors import JaxlmError


@dataclasses.dataclass
class EvalIndex:
    """n-gram length -> (sorted hashes, the eval file of each), and the file names."""

    by_length: dict[int, tuple[np.ndarray, np.ndarray]]
    names: list[str]

    def matches(self, text: str, wh: np.ndarray | None = None) -> tuple[int, list[tuple[int, int, str]]]:
        """(n-grams of `text` found in the index, merged character spans [(start, end, eval file)]).
        wh: the text's word hashes (ngrams.word_hashes(ngrams.words(text))) when the caller has them."""
        wh = ngrams.word_hashes(ngrams.words(text)) if wh is None else wh
        hits: list[tuple[int, int, int]] = []  # (first word, last word + 1, file index)
        grams = ngrams.ngram_hashes_by_length(wh, list(self.by_length))
        for n, (keys, files) in self.by_length.items():
            h = grams[n]
            if not len(h):
                continue
            pos = np.searchsorted(keys, h).clip(0, len(keys) - 1)
            for i in np.flatnonzero(keys[pos] == h):
                hits.append((int(i), int(i) + n, int(files[pos[i]])))
        if not hits:
            return 0, []
        spans = ngrams.word_spans(text)
        merged: list[list[int]] = []
        for a, b, f in sorted(hits):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b, f])
        return len(hits), [(spans[a][0], spans[b - 1][1], self.names[f]) for a, b, f in merged]


def build_index(items: list[tuple[str, str]], ngram: int, min_item_words: int) -> EvalIndex:
    """Index of (eval file name, item text) pairs."""
    names = sorted({name for name, _ in items})
    file_of = {name: i for i, name in enumerate(names)}
    parts: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    cache: dict[str, int] = {}
    for name, text in items:
        wh = ngrams.word_hashes(ngrams.words(text), cache)
        n = ngram if len(wh) >= ngram else len(wh) if len(wh) >= min_item_words else 0
        if n:
            h = ngrams.ngram_hashes(wh, n, whole_if_short=False)
            keys, files = parts.setdefault(n, ([], []))
            keys.append(h)
            files.append(np.full(len(h), file_of[name], np.int32))
    by_length = {}
    for n, (keys, files) in sorted(parts.items()):
        k, f = np.concatenate(keys), np.concatenate(files)
        order = np.argsort(k, kind="stable")
        by_length[n] = (k[order], f[order])
    return EvalIndex(by_length, names)


def task_items(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(file name, text) items of every .jsonl / .json / .txt file in the given files or folders."""
    items = []
    for p in paths:
        root = resolve_path(p)
        if not root.exists():
            raise JaxlmError(f"decontamination task path {p} does not exist; fix data.curate.decontam.tasks")
        files = sorted(f for f in root.rglob("*") if f.suffix in (".jsonl", ".json", ".txt")) if root.is_dir() \
            else [root]
        for f in files:
            items += _file_items(f)
    return items


def _file_items(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".txt":
        return [(path.name, text)]
    items = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise JaxlmError(f"decontamination task file {path} has a line that is not JSON; give JSONL task data "
                             f"or a .txt file") from None
        strings = list(_strings(record))
        items += [(path.name, s) for s in strings]
        if len(strings) > 1:
            items.append((path.name, "".join(strings)))
    return items


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
