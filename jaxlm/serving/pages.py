"""Host-side page accounting: a free list, per-page reference counts, and the prefix cache.

Pages 1 .. num_pages are handed out (page 0 is the device pool's trash page, `paged_kv.TRASH_PAGE`).
A page is *in use* while some request holds it (refcount > 0). When its last holder lets go it
returns to the free list, unless it is a *cached prefix page*: a full page of some prompt, keyed by
a hash of its tokens chained with the hashes of all pages before it (so equal keys mean equal
prefixes, not just equal pages). A cached page with no holder waits in an LRU list; a later
request with the same prefix takes it back (a hit), and allocation evicts the least recently
released one when the free list is empty. So `in_use` counts only what live requests hold and
returns to zero when they all end, while `cached` pages stay reusable until memory is needed.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence


def prefix_hashes(tokens: Sequence[int], page_size: int, pages: int, salt: bytes = b"") -> list[bytes]:
    """Chained digests of tokens' first `pages` full pages: hash i covers tokens[: (i + 1) * page_size].
    salt separates caches whose pages hold different values for equal tokens (LongRoPE's factors)."""
    out, prev = [], hashlib.blake2b(salt, digest_size=16).digest()
    for i in range(pages):
        chunk = tokens[i * page_size:(i + 1) * page_size]
        prev = hashlib.blake2b(prev + b"".join(int(t).to_bytes(4, "little", signed=True) for t in chunk),
                               digest_size=16).digest()
        out.append(prev)
    return out


class PagePool:
    """Page ids for requests; `prefix_cache=False` never keeps a page past its last holder."""

    def __init__(self, num_pages: int, prefix_cache: bool = True):
        self.num_pages = num_pages
        self.prefix_cache = prefix_cache
        self.free = list(range(num_pages, 0, -1))  # pop() hands out the lowest id first
        self.refs = [0] * (num_pages + 1)
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}
        self.idle: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; LRU first
        self.hits = 0  # pages a request took from the cache instead of computing them
        self.queries = 0  # pages looked up

    @property
    def available(self) -> int:
        """Pages `allocate` can hand out now (free, or cached and evictable)."""
        return len(self.free) + len(self.idle)

    @property
    def in_use(self) -> int:
        return self.num_pages - self.available

    @property
    def cached(self) -> int:
        return len(self.hash_of)

    def allocate(self) -> int | None:
        """A page for one holder, or None when every page is held."""
        if self.free:
            page = self.free.pop()
        elif self.idle:
            page, _ = self.idle.popitem(last=False)
            del self.by_hash[self.hash_of.pop(page)]
        else:
            return None
        self.refs[page] = 1
        return page

    def release(self, pages: Sequence[int]) -> None:
        for page in pages:
            self.refs[page] -= 1
            assert self.refs[page] >= 0, f"page {page} released more often than held"
            if self.refs[page] == 0:
                if page in self.hash_of:
                    self.idle[page] = None
                else:
                    self.free.append(page)

    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """Hold the cached pages of the longest cached prefix of `hashes`; returns them in order."""
        if not self.prefix_cache:
            return []
        self.queries += len(hashes)
        pages = []
        for h in hashes:
            page = self.by_hash.get(h)
            if page is None:
                break
            self.idle.pop(page, None)
            self.refs[page] += 1
            pages.append(page)
        self.hits += len(pages)
        return pages

    def publish(self, h: bytes, page: int) -> None:
        """Make a held, fully written prompt page findable by its prefix hash."""
        if self.prefix_cache and h not in self.by_hash and page not in self.hash_of:
            self.by_hash[h] = page
            self.hash_of[page] = h
