"""Exact-duplicate memory with a fixed bound: 64-bit document hashes in two generations of tables.

`SeenHashes(capacity)` holds two open-addressing tables (linear probing, at most half full) of
`capacity` hashes each, capacity rounded up to a power of two. A hash is a duplicate when either
table holds it. When the newer table is full it becomes the older one and the older one is
forgotten. A hash seen again moves to the newer table, so a document is remembered as long as fewer
than `capacity` other distinct documents came after its last occurrence, at most 2 x capacity are,
and memory is fixed at 32 bytes x capacity (two tables of 2 x capacity slots of 8 bytes), allocated
once. Past the bound a duplicate of a forgotten document is kept (never a unique one dropped; the
only false positive is a 64-bit hash collision, about n^2 / 2^65 for n documents). Insertion order
alone decides the contents, so re-adding the same hashes after a restore rebuilds the same memory.
"""

from __future__ import annotations

import numpy as np


class SeenHashes:
    def __init__(self, capacity: int):
        self.capacity = 1 << max(0, int(capacity) - 1).bit_length()  # a power of two >= capacity
        self._mask = 2 * self.capacity - 1
        self._new = np.zeros(2 * self.capacity, np.uint64)  # 0 marks an empty slot
        self._old = np.zeros(2 * self.capacity, np.uint64)
        self._count = 0  # hashes in _new
        self._old_used = False

    @property
    def nbytes(self) -> int:
        return self._new.nbytes + self._old.nbytes

    def clear(self) -> None:
        if self._count:
            self._new[:] = 0
        if self._old_used:
            self._old[:] = 0
        self._count, self._old_used = 0, False

    def __contains__(self, h: int) -> bool:
        """Whether hash h is remembered (without counting this as seeing it)."""
        key = np.uint64(h or 1)
        return self._probe(self._new, key)[1] or (self._old_used and self._probe(self._old, key)[1])

    def add(self, h: int) -> bool:
        """Remember hash h; True when it was already remembered (a duplicate)."""
        key = np.uint64(h or 1)
        slot, found = self._probe(self._new, key)
        if found:
            return True
        in_old = self._old_used and self._probe(self._old, key)[1]
        if self._count == self.capacity:  # the newer table is full: it becomes the older one
            self._old, self._new = self._new, self._old
            self._new[:] = 0
            self._count, self._old_used = 0, True
            slot, _ = self._probe(self._new, key)
        self._new[slot] = key  # a hash found in the older table moves to the newer: recently seen stays
        self._count += 1
        return bool(in_old)

    def _probe(self, table: np.ndarray, key: np.uint64) -> tuple[int, bool]:
        """(slot holding key, True) or (first empty slot on its probe path, False)."""
        i = int(key) & self._mask
        while True:
            v = table[i]
            if v == key:
                return i, True
            if v == 0:
                return i, False
            i = (i + 1) & self._mask
