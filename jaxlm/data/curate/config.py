"""The `data.curate:` section: which curation stages run and the thresholds that select documents.

Every stage is optional. Scores are computed once (`jaxlm data curate`) and written as per-document
attributes; the thresholds here only select, so changing one and running `jaxlm data curate CONFIG
--out DIR --from-attributes` re-selects without rescoring. Ranges are checked when the config is read
(a threshold out of range is a one-line ConfigError, exit 2).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.errors import JaxlmError
from jaxlm.fields import bounded, check_fields


def require(module: str, stage: str):
    """Import an optional library of the `curate` extra, or fail in one line saying how to install it."""
    import importlib  # lazy: only the stages that need a library import one

    try:
        return importlib.import_module(module)
    except ImportError:
        raise JaxlmError(f"{stage} needs the {module} package: pip install -e \".[curate]\"") from None


@dataclasses.dataclass(frozen=True)
class NearDedupConfig:
    """MinHash LSH over word (or character) n-grams; clusters of near-duplicates keep one document."""

    enabled: bool = False
    threshold: float = bounded(0.8, gt=0, le=1, note="estimated Jaccard similarity of the n-gram sets")
    unit: Literal["word", "char"] = "word"  # n-grams of lower-cased words, or of characters (white space collapsed)
    ngram: int = bounded(5, ge=1)  # words (or characters) per n-gram
    num_perm: int = bounded(128, ge=16, le=1024)  # MinHash permutations: the signature length
    bands: int = bounded(0, ge=0, note="0: chosen from threshold and num_perm")  # LSH bands (rows = num_perm // bands)
    seed: int = 1  # the MinHash permutations' seed (same seed = comparable signatures)

    def __post_init__(self):
        check_fields(self, "data.curate.near_dedup")


@dataclasses.dataclass(frozen=True)
class HeuristicConfig:
    """Gopher-style rules on words (data.filters' min_chars / min_tokens apply as well)."""

    min_words: int = bounded(0, ge=0, note="0: no minimum")  # white-space separated words
    min_alpha_frac: float = bounded(0.0, ge=0, le=1, note="0: off")  # share of words holding a letter (Gopher: 0.8)
    max_symbol_frac: float = bounded(1.0, ge=0, le=1, note="1: off")  # share of non-alphanumeric, non-space chars

    def __post_init__(self):
        check_fields(self, "data.curate.heuristics")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """A fastText quality classifier from `jaxlm data train-classifier`; score = P(high quality)."""

    model: str | None = None  # the .bin file (its .json sidecar beside it); null: stage off
    min_score: float = bounded(0.5, ge=0, le=1)  # keep documents scoring at least this

    def __post_init__(self):
        check_fields(self, "data.curate.classifier")


@dataclasses.dataclass(frozen=True)
class PerplexityConfig:
    """Per-document perplexity under a jaxlm model (CCNet's filter with our own model in place of KenLM)."""

    model: str | None = None  # a model dir, run dir or checkpoint step; null: stage off
    max_perplexity: float = bounded(0.0, ge=0, note="0: score only, drop nothing")
    max_tokens: int = bounded(256, ge=2)  # tokens scored per document (its first ones, bos included)
    batch_size: int = bounded(16, ge=1)  # documents per compiled call
    retokenize: bool = False  # true: encode with the model's own tokenizer when it differs from data.tokenizer

    def __post_init__(self):
        check_fields(self, "data.curate.perplexity")


@dataclasses.dataclass(frozen=True)
class DecontamConfig:
    """n-gram overlap with evaluation text: lm-eval task files, data.validation, any file given."""

    enabled: bool = False
    ngram: int = bounded(13, ge=1)  # words per n-gram (GPT-3 / Llama 3 use 13)
    min_item_words: int = bounded(8, ge=1)  # eval items shorter than `ngram` match as a whole if at least this long
    tasks: tuple[str, ...] = ("bundled:eval",)  # .jsonl / .txt files or folders of them (every string field)
    validation: bool = True  # also data.validation's documents
    action: Literal["flag", "drop"] = "drop"

    def __post_init__(self):
        check_fields(self, "data.curate.decontam")


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    exact_dedup: bool = True  # exact duplicates (64-bit hash of the text) go first, in corpus order
    near_dedup: NearDedupConfig = NearDedupConfig()
    heuristics: HeuristicConfig = HeuristicConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    perplexity: PerplexityConfig = PerplexityConfig()
    decontam: DecontamConfig = DecontamConfig()
    count_tokens: bool = True  # tokens per document with data.tokenizer (for tokens in / out per stage)
    chunk_docs: int = bounded(256, ge=1)  # documents per task sent to a worker

    def __post_init__(self):
        check_fields(self, "data.curate")
