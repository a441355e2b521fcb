"""One pass over a config's sources: documents, tokens, filter drops and pipeline throughput."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxlm.data.config import DataConfig, SourceConfig
from jaxlm.data.pipeline import make_eval_iterator
from jaxlm.tokenizer import Tokenizer


def pass_stats(data_cfg: DataConfig, tokenizer: Tokenizer, srcs: tuple[SourceConfig, ...], *, seq_len: int,
               batch_size: int, max_batches: int | None = None) -> dict:
    """Run the pipeline once over `srcs` (unshuffled); counters plus rows, padding and tokens/s."""

    data_cfg = dataclasses.replace(data_cfg, prefetch=0)  # counters exact at the end of the pass
    it = make_eval_iterator(data_cfg, tokenizer, seq_len=seq_len, batch_size=batch_size, sources_=srcs)
    start = time.perf_counter()
    batches = real = masked = 0
    for batch in it:
        batches += 1
        real += int(np.count_nonzero(batch["segment_ids"]))
        masked += int(batch["loss_mask"].sum())
        if max_batches is not None and batches >= max_batches:
            break
    seconds = time.perf_counter() - start
    out = {"batches": batches, "input_tokens": real, "positions": batches * batch_size * seq_len,
           "loss_tokens": masked, "seconds": seconds, "tokens_per_s": real / max(seconds, 1e-9)}
    out.update(it.stats())
    out["per_source"] = {src.label: dict(st["counters"]) for src, st in zip(srcs, it.get_state()["streams"])}
    it.close()
    return out
