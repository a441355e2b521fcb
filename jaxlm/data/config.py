"""The `data:` section of a run config: tokenizer, sources, mixture phases, filters, packing."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxlm.data.curate.config import CurateConfig
from jaxlm.errors import ConfigError
from jaxlm.fields import bounded, check_fields


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One corpus. `path`: a file, a folder (read recursively) or a glob; `bundled:` = shipped assets."""

    path: str
    name: str = ""  # referenced by phases.weights; defaults to the path
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"  # auto: by extension (.jsonl/.parquet/else text)
    text_field: str = "text"  # jsonl / parquet: the column holding the document text
    unit: Literal["file", "paragraph", "line"] = "file"  # plain text: what one document is
    weight: float = bounded(1.0, ge=0, note="0: not drawn from")  # mixture weight when no phases are given

    def __post_init__(self):
        check_fields(self, f"data.sources[{self.label}]")

    @property
    def label(self) -> str:
        return self.name or self.path


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """On-the-fly document filters. A field left unset takes the preset's value.

    preset "openelm": drop documents with fewer than 200 characters after cleaning (lower-case,
    punctuation stripped, white space collapsed) or fewer than 256 tokens, and exact duplicates.
    """

    preset: Literal["none", "openelm"] = "none"
    min_chars: int | None = bounded(None, ge=0, note="0: no minimum")  # characters of the cleaned text
    min_tokens: int | None = bounded(None, ge=0, note="0: no minimum")  # tokens of the document, bos/eos not counted
    dedup: bool | None = None  # drop exact duplicates (by 64-bit hash of the text) within an epoch
    # hashes remembered per source and process (rounded up to a power of two): at least the last this many
    # distinct documents, at most twice; 32 bytes each (32 MiB by default)
    dedup_capacity: int = bounded(1 << 20, ge=1, note="or dedup: false")

    def __post_init__(self):
        check_fields(self, "data.filters")

    def resolved(self) -> tuple[int, int, bool]:
        """(min_chars, min_tokens, dedup) with the preset filled in."""
        base = {"none": (0, 0, False), "openelm": (200, 256, True)}[self.preset]
        return (base[0] if self.min_chars is None else self.min_chars,
                base[1] if self.min_tokens is None else self.min_tokens,
                base[2] if self.dedup is None else self.dedup)


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """From training step `start_step` on, rows are drawn from the named sources in these proportions."""

    start_step: int = bounded(0, ge=0)
    weights: dict[str, float] = bounded(default_factory=dict, ge=0)

    def __post_init__(self):
        check_fields(self, "data.phases")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tokenizer: str = "bundled:tokenizer"  # a tokenizer.model / rank file, or a directory holding one
    tokenizer_kind: Literal["auto", "sentencepiece", "tiktoken"] = "auto"
    sources: tuple[SourceConfig, ...] = (SourceConfig(path="bundled:corpus/train", name="plays"),)
    phases: tuple[PhaseConfig, ...] = ()  # empty: one phase using each source's `weight`
    validation: tuple[SourceConfig, ...] = (SourceConfig(path="bundled:corpus/valid", name="held_out"),)
    mode: Literal["pack", "pad"] = "pack"  # pack documents into full rows, or one document per row (OpenELM)
    add_bos: bool = True
    add_eos: bool = True
    filters: FilterConfig = FilterConfig()
    curate: CurateConfig = CurateConfig()  # `jaxlm data curate` stages and thresholds (docs/data.md#curation)
    shuffle: bool = True  # file order per epoch, and rows within windows of `shuffle_window`
    shuffle_window: int = bounded(512, ge=1, note="1: keep stream order")  # rows per source shuffled together
    on_bad_record: Literal["skip", "error"] = "skip"  # unreadable/empty file, bad JSONL line, non-UTF-8 text
    prefetch: int = bounded(4, ge=0, note="0: none")  # batches prepared ahead by a background thread
    # processes that filter and tokenize: 1 = in the pipeline's thread, N > 1 = N worker processes
    workers: int = bounded(1, ge=1, note="1: tokenize in the pipeline's thread, N > 1: N worker processes")
    prepared: str | None = None  # a folder from `jaxlm data prepare`: training reads its packed rows instead of
    # tokenizing data.sources on the fly (same source names; the mixture weights and phases still apply)

    def __post_init__(self):
        check_fields(self, "data")
        if not self.sources:
            raise ConfigError("data.sources is empty; name at least one corpus (e.g. path: bundled:corpus/train)")
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"data.sources has repeated names {labels}; give each source a distinct `name`")
        starts = [p.start_step for p in self.phases]
        if starts and (starts[0] != 0 or starts != sorted(set(starts))):
            raise ConfigError(f"data.phases start_step values {starts} must begin at 0 and increase")
        for p in self.phases:
            unknown = set(p.weights) - set(labels)
            if unknown:
                raise ConfigError(f"data.phases (start_step {p.start_step}) names unknown sources "
                                  f"{sorted(unknown)}; known: {labels}")
            if sum(p.weights.values()) <= 0:
                raise ConfigError(f"data.phases (start_step {p.start_step}) weights must have a positive sum, "
                                  f"got {p.weights}")
        if not self.phases and sum(s.weight for s in self.sources) <= 0:
            raise ConfigError("data.sources weights sum to 0; give at least one source a positive weight")

    def phase_weights(self) -> list[tuple[int, list[float]]]:
        """[(start_step, weight per source in `sources` order, normalised)], sorted by start_step."""
        labels = [s.label for s in self.sources]
        phases = self.phases or (PhaseConfig(0, {s.label: s.weight for s in self.sources}),)
        out = []
        for p in phases:
            w = [float(p.weights.get(label, 0.0)) for label in labels]
            out.append((p.start_step, [x / sum(w) for x in w]))
        return out
