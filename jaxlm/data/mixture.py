"""Which source the next row of a batch comes from: a deterministic weighted interleave.

The row goes to the source furthest below its share so far (argmax of weight x rows given - rows
given to it; ties to the first), so the mixture weights hold to within one row at every step. The
phase in force at the batch's step gives the weights, and a phase change restarts the counts.
Used by the on-the-fly pipeline and by prepared shards, so both draw the same sources in the same order.
"""

from __future__ import annotations


def pick(phases: list[tuple[int, list[float]]], step: int, phase: int, counts: list[int]) -> tuple[int, int, list[int]]:
    """(source, phase, counts) after giving one row of batch `step`; `counts` is updated in place
    unless the phase changes (then a fresh list is returned)."""
    current = max(i for i, (start, _) in enumerate(phases) if start <= step)
    if current != phase:
        phase, counts = current, [0] * len(counts)
    weights = phases[phase][1]
    n = sum(counts) + 1
    k = max((i for i, w in enumerate(weights) if w > 0), key=lambda i: (weights[i] * n - counts[i], -i))
    counts[k] += 1
    return k, phase, counts
