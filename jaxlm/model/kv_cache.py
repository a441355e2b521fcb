"""The KV cache for decoding: one entry per layer group, sized for that group's kv heads.

A group's cache is a dict of arrays with a leading layer axis, scanned together with the
group's stacked parameters: k, v (L_g, B, S, Hkv, D). Slot s of a row holds the key/value of
the token at position s of that row, so a row's prompt and its generated tokens are written
contiguously from position 0, and attention masks slots by position (slot <= query position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.model.config import ModelConfig

LayerCache = dict[str, jax.Array]


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=jnp.bfloat16) -> list[LayerCache]:
    """Zeroed cache for `batch_size` rows of up to `max_len` positions."""
    caches = []
    for spec, count in cfg.layer_groups:
        shape = (count, batch_size, max_len, spec.num_kv_heads, cfg.head_dim)
        caches.append({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)})
    return caches


def update_layer(cache: LayerCache, k: jax.Array, v: jax.Array, start: jax.Array
                 ) -> tuple[LayerCache, jax.Array, jax.Array]:
    """Write k, v (B, T, Hkv, D) at positions start[b] .. start[b] + T - 1 of each row.

    Returns the new cache and the full keys and values (B, S, Hkv, D) to attend over.
    """
    def write(buf, new, s):  # buf (S, Hkv, D), new (T, Hkv, D)
        return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (s, 0, 0))

    k_all = jax.vmap(write)(cache["k"], k, start)
    v_all = jax.vmap(write)(cache["v"], v, start)
    return {"k": k_all, "v": v_all}, k_all.astype(k.dtype), v_all.astype(v.dtype)
