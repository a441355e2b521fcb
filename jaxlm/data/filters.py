"""Document filters: OpenELM's length rules and exact-duplicate removal, each counting its drops.

Cleaning for the character rule follows OpenELM: lower-case, strip punctuation, collapse white
space; the document itself is not changed. Duplicates are found by a 64-bit BLAKE2 hash of the
raw text, within one epoch of one source.
"""

from __future__ import annotations

import hashlib
import re
import string

_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """OpenELM's cleaning: lower-case, no ASCII punctuation, runs of white space -> one space, stripped."""
    return _SPACE.sub(" ", _PUNCT.sub("", text.lower())).strip()


def doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def too_few_chars(text: str, min_chars: int) -> bool:
    """True when the cleaned text is shorter than min_chars; cheap when the raw text is already short or long."""
    if min_chars <= 0:
        return False
    if len(text) < min_chars:  # cleaning never lengthens the text
        return True
    return len(clean_text(text)) < min_chars
