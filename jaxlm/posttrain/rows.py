"""Tokenized chat examples -> rows of `seq_len` positions with the fields pretraining rows have
(jaxlm.data.packing): inputs, targets, segment_ids, positions, loss_mask.

SFT: conversations packed end to end as segments 1, 2, ... (attention never crosses a segment, positions
restart), the loss on the positions whose target is an assistant token. Preference: one pair per row,
segment 1 = prompt + chosen, segment 2 = prompt + rejected, the loss mask on each answer's tokens.
An example longer than the row is dropped or truncated (posttrain.too_long); `fit` counts both.
"""

from __future__ import annotations

import numpy as np

from jaxlm.data import packing

Example = tuple[np.ndarray, np.ndarray]  # (ids, mask): int32 token ids, bool "the loss covers this token"


def fit(example: Example, limit: int, too_long: str, counts: dict) -> Example | None:
    """The example cut to `limit` tokens, or None when it is too long and dropped (or has no masked token left)."""
    ids, mask = example
    if len(ids) > limit:
        counts["too_long"] = counts.get("too_long", 0) + 1
        if too_long == "drop":
            return None
        ids, mask = ids[:limit], mask[:limit]
    if not mask[1:].any():  # nothing to learn (the first token is never a target)
        counts["no_target"] = counts.get("no_target", 0) + 1
        return None
    return ids, mask


def pack_plan(lengths: list[int], order: np.ndarray, seq_len: int) -> list[list[int]]:
    """Example indices of each row: examples in `order`, each placed after the previous one when it fits."""
    rows, current, used = [], [], 0
    for i in order:
        if used + lengths[i] > seq_len and current:
            rows.append(current)
            current, used = [], 0
        current.append(int(i))
        used += lengths[i]
    return rows + ([current] if current else [])


def sft_row(examples: list[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    row = packing.packed_row([(ids, 0, len(ids)) for ids, _ in examples], seq_len, pad_id)
    row["loss_mask"][:] = 0.0
    at = 0
    for ids, mask in examples:  # position j predicts token j + 1: it counts when that token is masked in
        row["loss_mask"][at:at + len(ids) - 1] = mask[1:]
        at += len(ids)
    return row


def pair_row(chosen: Example, rejected: Example, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    return sft_row([chosen, rejected], seq_len, pad_id)
