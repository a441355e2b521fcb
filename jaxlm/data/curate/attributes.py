"""The model-free scores of a chunk of documents, computed in a worker: one column per attribute.

`Scoring` holds what a worker needs (the data tokenizer, the classifier path, the decontamination
index, the MinHash settings) and is sent to each worker process once. `score_chunk` depends on the
texts alone, so the columns are the same for any worker count and any order of chunks.

Columns (one value per document):
  chars          characters of the text
  clean_chars    characters after OpenELM's cleaning (data.filters.min_chars is checked on this)
  words          white-space separated words
  tokens         data.tokenizer's tokens (bos/eos not counted); -1 when count_tokens is off
  alpha_frac     share of words holding a letter (Gopher's rule)
  symbol_frac    share of characters that are neither alphanumeric nor white space
  exact_hash     64-bit BLAKE2 hash of the text (signed int64 in the file), for exact dedup
  quality        classifier P(high quality); NaN when the stage is off
  decontam_ngrams, decontam_spans   overlapping eval n-grams, and the merged spans as JSON
                 [[start, end, eval file], ...]
and, outside the table, the (num_perm,) uint32 MinHash signature of each document.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np

from jaxlm.data import filters
from jaxlm.data.curate import classifier, minhash, ngrams
from jaxlm.data.curate.config import CurateConfig
from jaxlm.data.curate.decontam import EvalIndex

_SYMBOL = re.compile(r"[^\w\s]")
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[^\s\w]|[\d_])+(?!\S)")  # a white-space separated word without a letter
COLUMNS = ("chars", "clean_chars", "words", "tokens", "alpha_frac", "symbol_frac", "exact_hash", "quality",
           "decontam_ngrams", "decontam_spans")


@dataclasses.dataclass
class Scoring:
    curate: CurateConfig
    tokenizer: object | None  # jaxlm Tokenizer (picklable) or None
    index: EvalIndex | None
    classifier_path: str | None
    _model: object = None  # the loaded fastText model (per process)
    _cache: dict = dataclasses.field(default_factory=dict)  # word -> hash, kept across chunks

    def __getstate__(self):
        return {**self.__dict__, "_model": None, "_cache": {}}

    def model(self):
        if self._model is None and self.classifier_path:
            self._model = classifier.load(self.classifier_path)
        return self._model


def score_chunk(sc: Scoring, texts: list[str]) -> tuple[dict[str, list], np.ndarray | None]:
    """(columns, signatures or None) for a chunk of documents."""
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    nd = sc.curate.near_dedup
    word_grams = nd.enabled and nd.unit == "word"
    ngram_sets = []
    for text in texts:
        words = text.split()
        cols["chars"].append(len(text))
        cols["clean_chars"].append(len(filters.clean_text(text)))
        cols["words"].append(len(words))
        with_letter = len(words) - len(_NO_LETTER_WORD.findall(text))
        cols["alpha_frac"].append(with_letter / len(words) if words else 0.0)
        cols["symbol_frac"].append(len(_SYMBOL.findall(text)) / len(text) if text else 0.0)
        cols["exact_hash"].append(np.uint64(filters.doc_hash(text)).view(np.int64).item())
        wh = ngrams.word_hashes(ngrams.words(text), sc._cache) if word_grams or sc.index is not None else None
        hits, spans = sc.index.matches(text, wh) if sc.index is not None else (0, [])
        cols["decontam_ngrams"].append(hits)
        cols["decontam_spans"].append(json.dumps(spans) if spans else "")
        if nd.enabled:  # the n-gram set for MinHash, from the same word hashes
            ngram_sets.append(np.unique(ngrams.ngram_hashes(wh, nd.ngram)) if word_grams
                              else ngrams.text_ngrams(text, nd.ngram, "char"))
    if sc.curate.count_tokens and sc.tokenizer is not None:
        cols["tokens"] = [len(ids) for ids in sc.tokenizer.encode_batch(texts)] if texts else []
    else:
        cols["tokens"] = [-1] * len(texts)
    model = sc.model()
    cols["quality"] = classifier.score_texts(model, texts) if model is not None else [math.nan] * len(texts)
    sig = minhash.signatures(ngram_sets, nd.num_perm, nd.seed) if nd.enabled else None
    return cols, sig
