"""Attention over a paged KV cache: JAX's Pallas paged-attention kernel on TPU, a gathered view elsewhere.

A paged layer cache (`jaxlm.model.paged_kv`) hands `cached_attention` a `PagedKV` per k and v
instead of contiguous (B, Hkv, S, D) arrays: one layer's pages (Hkv, N, page_size, D) and the
rows' page tables (B, P). Two ways to attend:

  view    gather each row's P pages into (B, Hkv, P * page_size, D), slot s = position s, and run
          the same masked attention as a contiguous cache (the XLA oracle; every platform).
  kernel  `jax.experimental.pallas.ops.tpu.paged_attention` reads the pages in place (one query
          per row: decode), attending to the first position + 1 slots of each row. It runs per
          device shard (`per_shard`: rows over the batch axes, kv heads over "tensor"; the page
          pool is whole on every device of a batch replica). It has no sliding window, takes int8
          pages in its own scale layout, and on a TPU needs head_dim a multiple of 128 (its block
          rule), so windows, int8 caches, prefill chunks and OpenELM's 64-wide heads take the view.

The kernel runs when impl resolves to "pallas" and the Pallas target is a TPU (the TPU's own
compiler, or JAXLM_PALLAS_INTERPRET=tpu on a CPU for tests).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as pallas_paged_attention

from jaxlm.ops.sharded import per_shard

PAGES_PER_BLOCK = 8  # pages the kernel streams per block (the page table's width must divide by it)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKV:
    """One layer's keys (or values) in pages, with the rows' page tables."""

    pages: jax.Array  # (Hkv, N, page_size, D): the pool
    page_table: jax.Array  # (B, P) int32 page ids, position p of row b in page_table[b, p // page_size]
    scales: jax.Array | None = None  # (Hkv, N, page_size) float32 for int8 pages

    def view(self, dtype) -> jax.Array:
        """(B, Hkv, P * page_size, D) in dtype: row b's pages in table order (slot s holds position s)."""
        rows = jnp.swapaxes(self.pages[:, self.page_table], 0, 1)  # (B, Hkv, P, ps, D)
        rows = rows.reshape(rows.shape[:2] + (-1, rows.shape[-1]))
        if self.scales is None:
            return rows.astype(dtype)
        scales = jnp.swapaxes(self.scales[:, self.page_table], 0, 1).reshape(rows.shape[:3])
        return (rows.astype(jnp.float32) * scales[..., None]).astype(dtype)


def kernel_skip_reason(q: jax.Array, k: PagedKV, sliding_window: int | None) -> str:
    """Why the Pallas kernel cannot take this call ("" when it can)."""
    if q.shape[1] != 1:
        return "prefill chunk (the kernel takes one query per row)"
    if sliding_window is not None:
        return "sliding window"
    if k.scales is not None:
        return "int8 pages"
    if q.shape[-1] % 128:  # its TPU block rule for the per-head softmax statistics (OpenELM: 64)
        return f"head_dim {q.shape[-1]} not a multiple of 128"
    if k.page_table.shape[1] % PAGES_PER_BLOCK:
        return f"page table width not a multiple of {PAGES_PER_BLOCK}"
    return ""


def paged_attention(q: jax.Array, k: PagedKV, v: PagedKV, q_positions: jax.Array, interpret=False) -> jax.Array:
    """q (B, 1, Hq, D) at q_positions (B, 1) -> (B, 1, Hq, D) with the Pallas TPU kernel, per device shard."""
    scale = 1.0 / math.sqrt(q.shape[-1])  # the kernel does not scale the logits
    lengths = (q_positions[:, 0] + 1).astype(jnp.int32)

    def kernel(q, k_pages, v_pages, lengths, table):
        return pallas_paged_attention(q, k_pages, v_pages, lengths, table, pages_per_compute_block=PAGES_PER_BLOCK)

    def run():
        args = ((q[:, 0] * scale).astype(q.dtype), k.pages.astype(q.dtype), v.pages.astype(q.dtype), lengths,
                k.page_table)
        axes = (("batch", "heads", None), ("heads", None, None, None), ("heads", None, None, None), ("batch",),
                ("batch", None))
        return per_shard(kernel, args, axes, ("batch", "heads", None))

    if interpret:
        with pltpu.force_tpu_interpret_mode(interpret):
            return run()[:, None]
    return run()[:, None]
