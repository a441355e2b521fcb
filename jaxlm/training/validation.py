"""Validation during training: the mean cross-entropy (and perplexity) over data.validation.

Every process reads its own share of the validation documents (`make_eval_iterator`) and feeds its
rows of each global batch; the summed cross-entropy and token counts are global arrays, so the result
combines every host's shard. All processes must run the same number of eval steps: that number is
`train.eval_batches`, or, when it is 0 (the whole set), the largest count over the processes, counted
once when the run starts (a process whose share runs out first feeds empty rows, which count nothing).
The count pass also makes an empty or unreadable validation set fail before the run writes anything.
"""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np

from jaxlm.data import make_eval_iterator
from jaxlm.errors import ConfigError
from jaxlm.parallel import distributed
from jaxlm.training.objectives import PAIR_METRICS
from jaxlm.training.step import BATCH_KEYS


class Validation:
    def __init__(self, batches, num_batches: int, eval_fn, batch_sharding):
        self.batches = batches  # () -> a fresh iterator of process-local batches
        self.num_batches = num_batches
        self.eval_fn = eval_fn
        self.batch_sharding = batch_sharding

    def run(self, state, rest) -> dict[str, float]:
        """One pass with `state` ({"params"} and, for a frozen-copy DPO reference, "reference"); every process
        calls it. Token objectives: {"val_loss", "val_ppl", "val_tokens"}; preference objectives: val_loss and
        the reward metrics, val_rewards/accuracies ... (keep_best ranks by `rank_value`)."""
        it = self.batches()
        try:
            sums = []
            for local in itertools.islice(it, self.num_batches):
                batch = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local[k]))
                         for k in BATCH_KEYS}
                sums.append(self.eval_fn(state, rest, batch))
            totals = {k: sum(float(s[k]) for s in jax.device_get(sums)) for k in sums[0]} if sums else {}
        finally:
            _close(it)
        count = max(totals.get("count", 0.0), 1.0)
        if "chosen_rewards" in totals:  # a preference objective
            return {"val_loss": totals["total"] / count, "val_pairs": int(totals["count"]),
                    **{f"val_{name}": totals[key] / count for name, key in PAIR_METRICS.items()}}
        loss = totals.get("ce", 0.0) / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": int(totals.get("tokens", 0))}


def rank_value(val: dict) -> float:
    """What checkpoint.keep_best minimises: 1 - reward accuracy for preference objectives, else the loss."""
    accuracy = val.get("val_rewards/accuracies")
    return val["val_loss"] if accuracy is None else 1.0 - accuracy


def make_validation(run_cfg, program, batch_sharding, tokenizer, eval_source, local_batch: int) -> Validation | None:
    """The run's Validation, or None when train.eval_every is 0.

    eval_source(process_index, process_count, batch_size) -> iterable of batches (a finite pass);
    default: `make_eval_iterator` over data.validation with the run's tokenizer.
    """
    tc = run_cfg.train
    if not tc.eval_every:
        return None
    pi, pc = jax.process_index(), jax.process_count()
    if eval_source is None:
        if tokenizer is None:
            raise ConfigError("train.eval_every needs a tokenizer to read data.validation; pass eval_source, or set "
                              "train.eval_every=0")
        def one_pass(num_batches=None):  # make_eval_iterator pads to num_batches itself
            return make_eval_iterator(run_cfg.data, tokenizer, seq_len=tc.seq_len, batch_size=local_batch,
                                      process_index=pi, process_count=pc, num_batches=num_batches)
    else:
        def one_pass(num_batches=None):
            batches = eval_source(pi, pc, local_batch)
            return batches if num_batches is None else _exactly(batches, num_batches)
    count = tc.eval_batches
    if not count:
        it = one_pass()
        try:
            count = sum(1 for _ in it)
        finally:
            _close(it)
        count = int(distributed.max_over_processes_async(count))
    if count == 0:
        raise ConfigError("data.validation yields no batch; add held-out text to it, or set train.eval_every=0")
    return Validation(lambda: one_pass(count), count, program.eval_fn, batch_sharding)


def _close(it) -> None:
    if hasattr(it, "close"):  # a BatchIterator's prefetch thread, or a generator
        it.close()


def _exactly(batches, n: int):
    """The first n batches of `batches`, then empty ones (loss_mask 0) if it runs out."""
    last = None
    for last in itertools.islice(batches, n):
        yield last
        n -= 1
    if n and last is None:
        raise ConfigError("this process's validation batches are empty; give every process some held-out rows")
    for _ in range(n):
        yield {**last, "loss_mask": np.zeros_like(np.asarray(last["loss_mask"]))}
