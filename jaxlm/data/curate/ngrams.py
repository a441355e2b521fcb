"""Deterministic 64-bit hashes of word and character n-grams, vectorised with numpy.

Words are the lower-cased runs of letters and digits (`\\w+`), so punctuation, case and white space
do not separate two copies of a text. Each distinct word is hashed once (BLAKE2b, 8 bytes: the same
in every process, unlike Python's salted `hash`); an n-gram's hash mixes its words' hashes by
position and goes through splitmix64's finaliser. Characters n-grams are taken over the lower-cased
text with white space collapsed, as UTF-8 bytes. A text with fewer than n units gives one n-gram of
all of them (a short document still has a signature); an empty text gives none.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_MASK = (1 << 64) - 1
_MULTIPLIERS = np.array([(0x9E3779B97F4A7C15 * (2 * k + 1)) & _MASK for k in range(64)], np.uint64)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character (start, end) of each word of `words(text)`, for showing matched spans."""
    return [m.span() for m in _WORD.finditer(text.lower())]


def word_hashes(tokens: list[str], cache: dict[str, int] | None = None) -> np.ndarray:
    """(len(tokens),) uint64: one hash per word; `cache` keeps the hashes of words seen before."""
    cache = {} if cache is None else cache
    out = np.empty(len(tokens), np.uint64)
    for i, w in enumerate(tokens):
        h = cache.get(w)
        if h is None:
            h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        out[i] = h
    return out


def ngram_hashes(unit_hashes: np.ndarray, n: int, whole_if_short: bool = True) -> np.ndarray:
    """(max(len - n + 1, 0),) uint64 hashes of the n-grams of a sequence of unit hashes (words or bytes).
    whole_if_short: a sequence of 1 <= len < n units gives one n-gram of all of them."""
    m = len(unit_hashes)
    if m < n:
        n = m if (whole_if_short and m) else n
        if m < n or m == 0:
            return np.empty(0, np.uint64)
    count = m - n + 1
    acc = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc ^= unit_hashes[k:k + count] * _MULTIPLIERS[k % 64] + np.uint64(k)
        return _mix(acc + np.uint64(n))


def ngram_hashes_by_length(unit_hashes: np.ndarray, lengths: list[int]) -> dict[int, np.ndarray]:
    """{n: ngram_hashes(unit_hashes, n, whole_if_short=False)} for several n in one pass over the n-gram
    positions (the mix of an n-gram extends the mix of its first n - 1 units), for decontamination's lengths."""
    m, top = len(unit_hashes), max(lengths, default=0)
    out: dict[int, np.ndarray] = {}
    if m == 0 or top == 0:
        return {n: np.empty(0, np.uint64) for n in lengths}
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(min(top, m)):
            count = m - k  # positions with k + 1 units
            acc = acc[:count] ^ (unit_hashes[k:k + count] * _MULTIPLIERS[k % 64] + np.uint64(k))
            if k + 1 in lengths:
                out[k + 1] = _mix(acc + np.uint64(k + 1))
    return {n: out.get(n, np.empty(0, np.uint64)) for n in lengths}


def char_unit_hashes(text: str) -> np.ndarray:
    """(bytes,) uint64: the lower-cased, white-space-collapsed text's UTF-8 bytes, spread by a mixer."""
    data = _SPACE.sub(" ", text.lower()).strip().encode("utf-8", "surrogatepass")
    return _mix(np.frombuffer(data, np.uint8).astype(np.uint64) + np.uint64(0x51ED27))


def text_ngrams(text: str, n: int, unit: str, cache: dict[str, int] | None = None) -> np.ndarray:
    """The set of n-gram hashes of a text (sorted, unique) for unit "word" or "char"."""
    units = word_hashes(words(text), cache) if unit == "word" else char_unit_hashes(text)
    return np.unique(ngram_hashes(units, n))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
