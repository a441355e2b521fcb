"""A paged KV cache: a pool of fixed-size pages shared by all requests, addressed through page tables.

Per layer group (as `kv_cache`): k, v (L_g, Hkv, N, page_size, D) for N pages, kv heads first as
JAX's TPU paged-attention kernel reads them; int8 adds k_scale, v_scale (L_g, Hkv, N, page_size),
one float32 scale per token and kv head (`kv_int8.quantize`). Page 0 is the trash page: it is never
handed to a request, every unused page-table entry points at it, and writes that belong to nobody
(padding rows, padding tokens past the table) land there.

A request's page table (P,) lists its pages in order: position p lives in page table[p // page_size]
at offset p % page_size. The model reaches this module through `kv_cache.update_layer`: a group
cache that carries a "page_table" (L_g, B, P) (broadcast over the layers, so `lax.scan` slices it
with the rest of the group) is paged. `update_layer` scatters the new keys and values into their
pages and returns, instead of contiguous arrays, `ops.paged.PagedKV` handles (the layer's pages and
the tables): `ops.cached_attention` either gathers each row's pages into the contiguous head-major
view slot s = position s and attends as over a static cache (the XLA oracle, every backend), or
runs the Pallas paged-attention kernel on the pages in place (TPU decode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.model import kv_int8
from jaxlm.model.config import ModelConfig
from jaxlm.ops.paged import PagedKV

PAGE_TABLE = "page_table"
TRASH_PAGE = 0


def init_pages(cfg: ModelConfig, num_pages: int, page_size: int, dtype=jnp.bfloat16) -> list[dict]:
    """Zeroed pool of num_pages pages (page 0, the trash page, included) per layer group."""
    dtype = jnp.dtype(dtype)
    pools = []
    for spec, count in cfg.scan_groups:
        shape = (count, spec.num_kv_heads, num_pages, page_size, cfg.head_dim)
        group = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        if dtype == jnp.int8:
            group["k_scale"] = jnp.zeros(shape[:-1], jnp.float32)
            group["v_scale"] = jnp.zeros(shape[:-1], jnp.float32)
        pools.append(group)
    return pools


def page_bytes(cfg: ModelConfig, page_size: int, dtype=jnp.bfloat16) -> int:
    """Bytes one page costs over all layers (computed, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_pages(cfg, 1, page_size, dtype))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def with_page_table(pools: list[dict], page_table: jax.Array) -> list[dict]:
    """The model's cache argument: every group's pool plus page_table (B, P), broadcast to (L_g, B, P)."""
    out = []
    for group in pools:
        layers = group["k"].shape[0]
        out.append({**group, PAGE_TABLE: jnp.broadcast_to(page_table, (layers,) + page_table.shape)})
    return out


def without_page_table(cache: list[dict]) -> list[dict]:
    """The pools back from the model's returned cache."""
    return [{name: x for name, x in group.items() if name != PAGE_TABLE} for group in cache]


def update_layer(cache: dict, k: jax.Array, v: jax.Array, start: jax.Array) -> tuple[dict, PagedKV, PagedKV]:
    """One layer: write k, v (B, T, Hkv, D) at positions start[b] .. start[b] + T - 1 through the page
    table; returns the new pool and the layer's keys and values as `PagedKV` (see the module docstring)."""
    table = cache[PAGE_TABLE]  # (B, P)
    page_size = cache["k"].shape[2]
    t = k.shape[1]
    positions = start[:, None] + jnp.arange(t, dtype=start.dtype)[None]  # (B, T)
    index = positions // page_size
    inside = (index < table.shape[1]) & (positions >= 0)
    page = jnp.where(inside, jnp.take_along_axis(table, jnp.clip(index, 0, table.shape[1] - 1), axis=1), TRASH_PAGE)
    offset = positions % page_size

    def write(pool, new):  # pool (Hkv, N, ps[, D]), new (B, T, Hkv[, D]) -> pool[:, page, offset] (Hkv, B, T[, D])
        return pool.at[:, page, offset].set(jnp.moveaxis(new, 2, 0).astype(pool.dtype))

    new = {PAGE_TABLE: table}
    if "k_scale" not in cache:
        new["k"], new["v"] = write(cache["k"], k), write(cache["v"], v)
        return new, PagedKV(new["k"], table), PagedKV(new["v"], table)
    for name, x in (("k", k), ("v", v)):
        q, scale = kv_int8.quantize(x)
        new[name] = write(cache[name], q)
        new[name + "_scale"] = write(cache[name + "_scale"], scale)
    return new, PagedKV(new["k"], table, new["k_scale"]), PagedKV(new["v"], table, new["v_scale"])
