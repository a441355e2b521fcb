"""Near-duplicate clusters: MinHash signatures (rensa), LSH banding, verified pairs, connected components.

Signatures: `rensa.RMinHash` over each document's set of n-gram hashes (jaxlm.data.curate.ngrams), one
(num_perm,) uint32 row per document; the estimated Jaccard similarity of two documents is the share of
equal entries. rensa (Rust) rather than datasketch (pure Python): it takes the n-gram hashes of a whole
chunk of documents as one flat array; benchmarks/results/curate.md has both timed.

Clustering (`clusters`) runs over every signature of the corpus in one place, in corpus order, so its
result does not depend on how many processes or workers computed the signatures. The signature is cut
into `bands` bands of `rows` entries; documents equal on a whole band are candidates (for Jaccard s a
pair becomes a candidate with probability 1 - (1 - s^rows)^bands). Candidates are confirmed by their
estimated Jaccard >= threshold (so band collisions of dissimilar documents do not merge clusters), and
confirmed pairs are joined by union-find: a cluster is a connected component, represented by its first
document in corpus order. Memory: 4 x num_perm bytes per document (512 B at 128 permutations).
"""

from __future__ import annotations

import numpy as np

from jaxlm.data.curate import ngrams
from jaxlm.data.curate.config import require


def signatures(ngram_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """(len(ngram_sets), num_perm) uint32 MinHash signatures; an empty set gets an all-0xFFFFFFFF row
    (it never matches a real document on a band)."""
    rensa = require("rensa", "data.curate.near_dedup")
    out = np.full((len(ngram_sets), num_perm), 0xFFFFFFFF, np.uint32)
    filled = [i for i, s in enumerate(ngram_sets) if len(s)]
    if filled:
        flat = np.concatenate([ngram_sets[i] for i in filled]).astype(np.uint64)
        offsets = np.cumsum([0] + [len(ngram_sets[i]) for i in filled]).astype(np.uint64)
        rows = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, seed).to_rows()
        out[filled] = np.asarray(rows, np.uint32)
    return out


def document_signatures(texts: list[str], ngram: int, unit: str, num_perm: int, seed: int,
                        cache: dict | None = None) -> np.ndarray:
    return signatures([ngrams.text_ngrams(t, ngram, unit, cache) for t in texts], num_perm, seed)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands x rows <= num_perm minimising 0.1 x the area of false positives (similarity
    below the threshold that become candidates) + 0.9 x that of false negatives (above it that do not), as
    datasketch's weighted optimum does. Weighted for recall: every candidate is verified afterwards, so a
    false positive costs one comparison, a false negative a duplicate kept. At 0.8 and 128 permutations:
    14 bands of 9 rows; a pair at Jaccard 0.8 / 0.85 / 0.9 is a candidate with probability 0.87 / 0.98 / 0.999."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = 1 - (1 - s ** rows) ** bands
            cost = (0.1 * np.trapezoid(np.where(s < threshold, p, 0), s)
                    + 0.9 * np.trapezoid(np.where(s >= threshold, 1 - p, 0), s))
            if cost < best_cost - 1e-12:
                best, best_cost = (bands, rows), cost
    return best


def estimated_jaccard(sig: np.ndarray, a: int, others: np.ndarray) -> np.ndarray:
    return (sig[others] == sig[a]).mean(axis=1)


def clusters(sig: np.ndarray, active: np.ndarray, threshold: float, bands: int = 0) -> np.ndarray:
    """(n,) int64: for each document its cluster's representative (the first member in row order); -1 for
    inactive rows (e.g. exact duplicates, removed before). A document with no near-duplicate is its own."""
    n, num_perm = sig.shape
    bands, rows = (bands, num_perm // bands) if bands else lsh_params(threshold, num_perm)
    parent = np.arange(n)
    idx = np.flatnonzero(active)
    empty = (sig[idx] == 0xFFFFFFFF).all(axis=1)
    idx = idx[~empty]
    for band in range(bands):
        keys = _band_keys(sig[idx, band * rows:(band + 1) * rows])
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for a, b in zip(starts, ends):
            if b - a > 1:
                _join_bucket(sig, np.sort(idx[order[a:b]]), threshold, parent)
    roots = np.array([_find(parent, i) for i in range(n)])
    rep = np.full(n, -1, np.int64)
    first_of_root: dict[int, int] = {}
    for i in np.flatnonzero(active):  # row order: the first member seen is the representative
        rep[i] = first_of_root.setdefault(int(roots[i]), int(i))
    return rep


def _band_keys(block: np.ndarray) -> np.ndarray:
    """(m, rows) uint32 -> (m,) uint64 keys (a collision only makes a candidate, which is then verified)."""
    keys = np.zeros(len(block), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(block.shape[1]):
            keys = (keys * np.uint64(0x100000001B3)) ^ block[:, j].astype(np.uint64)
    return keys


def _join_bucket(sig: np.ndarray, members: np.ndarray, threshold: float, parent: np.ndarray) -> None:
    """Union the members of one LSH bucket whose estimated Jaccard with a pivot reaches the threshold;
    members unlike the pivot are compared among themselves with the next pivot."""
    rest = members
    while len(rest) > 1:
        pivot, others = rest[0], rest[1:]
        similar = estimated_jaccard(sig, pivot, others) >= threshold
        for j in others[similar]:
            _union(parent, int(pivot), int(j))
        rest = others[~similar]


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return int(root)


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)
