"""The KV cache for decoding: one entry per layer group, sized for that group's kv heads.

A group's cache is a dict of arrays with a leading layer axis, scanned together with the
group's stacked parameters: k, v (L_g, B, Hkv, S, D). Slot s of a row holds the key/value of
the token at position s of that row, so a row's prompt and its generated tokens are written
contiguously from position 0, and attention masks slots by position (slot <= query position).
Head-major storage (S next to D) is the layout attention reads, so XLA does not transpose the
whole cache at every decode step (it did with (B, S, Hkv, D): two full copies per layer and step).

Two storage formats:
  float (bfloat16 / float16 / float32)  k, v stored as they are (cast to the cache dtype)
  int8                                  k, v rounded to int8 with one float32 scale per token
                                        and kv head: k_scale, v_scale (L_g, B, Hkv, S), so a
                                        slot costs D + 4 bytes instead of 2 D (bf16)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.model.config import ModelConfig
from jaxlm.model.kv_int8 import dequantize, quantize
from jaxlm.ops import target_platform
from jaxlm.ops.policy import policy

LayerCache = dict[str, jax.Array]


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=jnp.bfloat16) -> list[LayerCache]:
    """Zeroed cache for `batch_size` rows of up to `max_len` positions; dtype int8 = quantized."""
    dtype = jnp.dtype(dtype)
    caches = []
    for spec, count in cfg.scan_groups:
        shape = (count, batch_size, spec.num_kv_heads, max_len, cfg.head_dim)
        group = {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        if dtype == jnp.int8:
            group["k_scale"] = jnp.zeros(shape[:-1], jnp.float32)
            group["v_scale"] = jnp.zeros(shape[:-1], jnp.float32)
        caches.append(group)
    return caches


def cache_bytes(cfg: ModelConfig, batch_size: int, max_len: int, dtype=jnp.bfloat16) -> int:
    """Bytes held by `init_cache(cfg, batch_size, max_len, dtype)` (computed, nothing allocated)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch_size, max_len, dtype))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def update_layer(cache: LayerCache, k: jax.Array, v: jax.Array, start: jax.Array
                 ) -> tuple[LayerCache, jax.Array, jax.Array]:
    """Write k, v (B, T, Hkv, D) at positions start[b] .. start[b] + T - 1 of each row.

    Returns the new cache and the full keys and values, head-major (B, Hkv, S, D) as stored, in
    k's dtype, to attend over (`jaxlm.ops.cached_attention`). A cache carrying a page table is a
    paged one (`jaxlm.model.paged_kv`, the serving engine's): the same contract over pages.
    """
    if "page_table" in cache:
        from jaxlm.model import paged_kv  # lazy: paged_kv imports this module

        return paged_kv.update_layer(cache, k, v, start)
    # One new token in each of several rows: a select of the row's slot where the platform's policy says
    # so (TPU: jaxlm/ops/policy.py gives the reason), else a per-row dynamic_update_slice.
    one_token_rows = k.shape[0] > 1 and k.shape[1] == 1
    select = one_token_rows and policy(target_platform()).cache_write_one_token == "select"

    def write(buf, new, s):  # buf (Hkv, S, ...), new (T, Hkv, ...)
        new = jnp.swapaxes(new, 0, 1).astype(buf.dtype)
        if select:
            slot = jax.lax.broadcasted_iota(jnp.int32, (1, buf.shape[1]) + (1,) * (buf.ndim - 2), 1)
            return jnp.where(slot == jnp.clip(s, 0, buf.shape[1] - 1), new, buf)  # clipped as the slice is
        return jax.lax.dynamic_update_slice(buf, new, (0, s) + (0,) * (buf.ndim - 2))

    if "k_scale" not in cache:
        k_all = jax.vmap(write)(cache["k"], k, start)
        v_all = jax.vmap(write)(cache["v"], v, start)
        return {"k": k_all, "v": v_all}, k_all.astype(k.dtype), v_all.astype(v.dtype)
    new = {}
    for name, x in (("k", k), ("v", v)):
        q, scale = quantize(x)
        new[name] = jax.vmap(write)(cache[name], q, start)
        new[name + "_scale"] = jax.vmap(write)(cache[name + "_scale"], scale, start)
    return new, dequantize(new["k"], new["k_scale"], k.dtype), dequantize(new["v"], new["v_scale"], v.dtype)
