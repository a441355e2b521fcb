"""Flash attention pieces shared by the GPU and TPU kernels: input checks, padding, the
per-block online-softmax math, and the custom VJP.

Notation: q (B, T, Hq, D), k/v (B, S, Hkv, D), G = Hq // Hkv query heads per kv head.
Query position t sees key position s when s <= t + (S - T) (causal; the offset aligns the
last query with the last key, as the reference does), s > t + (S - T) - W under a sliding
window W, and their segment ids are equal. Key blocks wholly outside the window are skipped;
with a window every visited block is masked.
Forward per query block, over key blocks:  s = q k^T * scale;  m' = max(m, rowmax s);
  p = exp(s - m');  l' = l e^(m - m') + rowsum p;  acc' = acc e^(m - m') + p v;  o = acc / l.
Backward (FlashAttention-2):  p = exp(s - lse);  dp = do v^T;  ds = p (dp - delta) with
  delta = rowsum(o * do);  dq = scale ds k;  dk = scale ds^T q;  dv = p^T do.
Masked entries get p = 0 by an explicit select, so a row with no visible key gives o = 0
(not NaN), matching the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

SUPPORTED_HEAD_DIMS = (32, 64, 96, 128)  # 32: the tiny test configs; 64/96/128: OpenELM, Phi-3, Llama 3
SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so max/exp never see inf - inf
NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b


@dataclasses.dataclass(frozen=True)
class Config:
    """Static description of one call (hashable: it is the custom VJP's non-differentiable argument)."""

    causal: bool
    sm_scale: float
    block_q: int
    block_k: int
    seq_q: int  # true lengths, before padding to the blocks
    seq_k: int
    groups: int  # G
    head_dim: int
    interpret: Any = False
    segments: bool = False
    window: int | None = None  # sliding window (causal only); None when it cannot mask anything

    @property
    def offset(self) -> int:  # query t is at key position t + offset
        return self.seq_k - self.seq_q

    @property
    def kv_padded(self) -> bool:
        return self.seq_k % self.block_k != 0


def check_inputs(q, k, v, segment_ids) -> None:
    """Raise ValueError naming what is supported when the shapes or dtypes do not fit."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"flash_attention: q, k, v must be (batch, seq, heads, head_dim), got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k {k.shape} and v {v.shape} must have the same shape")
    b, _, hq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"flash_attention: q {q.shape} and k {k.shape} must agree on batch and head_dim")
    if hq % k.shape[2]:
        raise ValueError(f"flash_attention: {hq} query heads are not a multiple of {k.shape[2]} kv heads; "
                         f"grouped-query attention needs num_query_heads % num_kv_heads == 0")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attention: head_dim {d} is not supported; supported: {SUPPORTED_HEAD_DIMS}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"flash_attention: dtype {q.dtype} is not supported; use float32, bfloat16 or float16")
    if segment_ids is not None:
        q_seg, kv_seg = split_segments(segment_ids)
        if q_seg.shape != q.shape[:2] or kv_seg.shape != k.shape[:2]:
            raise ValueError(f"flash_attention: segment ids {q_seg.shape}/{kv_seg.shape} must be (batch, seq) "
                             f"for q {q.shape[:2]} and kv {k.shape[:2]}")


def split_segments(segment_ids):
    return segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)


def pick_block(requested: int, seq: int, minimum: int) -> int:
    """The block size actually used: `requested`, shrunk (by halving) for short sequences."""
    block = requested
    while block // 2 >= max(seq, minimum):
        block //= 2
    return block


# ---------------------------------------------------------------- per-block math (shared)

def block_mask(cfg: Config, q_start, k_start, bq: int, bk: int, q_seg=None, kv_seg=None):
    """(bq, bk) bool: may query row r of the block at q_start see key column c of the block at k_start?

    q_seg (bq, 1) / kv_seg (1, bk) are the segment ids of the two blocks (or None).
    Returns None when nothing needs masking.
    """
    mask = None
    if cfg.causal or cfg.kv_padded:
        k_pos = k_start + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        if cfg.causal:
            q_pos = q_start + cfg.offset + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
            mask = k_pos <= q_pos
            if cfg.window is not None:
                mask = mask & (k_pos > q_pos - cfg.window)
        if cfg.kv_padded:
            valid = k_pos < cfg.seq_k
            mask = valid if mask is None else mask & valid
    if q_seg is not None:
        same = q_seg == kv_seg
        mask = same if mask is None else mask & same
    return mask


def scores(q, k, cfg: Config):
    """q (bq, D), k (bk, D) -> scale * q k^T (bq, bk) in float32."""
    s = jax.lax.dot_general(q, k, NT, preferred_element_type=jnp.float32)
    return s * cfg.sm_scale


def softmax_step(m, l, acc, s, mask, v):
    """One key block of the online softmax. m, l (bq, 1), acc (bq, D) float32; v (bk, D)."""
    if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    if mask is not None:
        p = jnp.where(mask, p, 0.0)
    alpha = jnp.exp(m - m_new)
    l_new = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc_new = alpha * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return m_new, l_new, acc_new


def finalize(m, l, acc):
    """-> (o (bq, D) float32, lse (bq, 1)); rows that saw no key give o = 0."""
    empty = l == 0.0
    o = acc / jnp.where(empty, 1.0, l)
    lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
    return o, lse


def probs_and_dscores(s, mask, lse, delta, do, v):
    """Backward for one (q block, k block) pair -> (p, ds) (bq, bk) float32 (ds without the scale)."""
    p = jnp.exp(s - lse)
    if mask is not None:
        p = jnp.where(mask, p, 0.0)
    dp = jax.lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
    return p, p * (dp - delta)


def causal_kv_blocks(cfg: Config, q_block, n_k: int):
    """Number of key blocks the query block sees (the rest are fully masked and skipped)."""
    if not cfg.causal:
        return n_k
    last = (q_block + 1) * cfg.block_q - 1 + cfg.offset  # last key position visible to the block
    return jnp.clip(jax.lax.div(jnp.maximum(last + cfg.block_k, 0), cfg.block_k), 0, n_k)


def causal_first_q_block(cfg: Config, k_block, n_q: int):
    """First query block that sees any key of the key block (earlier ones are skipped)."""
    if not cfg.causal:
        return 0
    first_q = k_block * cfg.block_k - cfg.offset  # first query position that sees the block
    return jnp.clip(jax.lax.div(jnp.maximum(first_q, 0), cfg.block_q), 0, n_q)


def window_first_kv_block(cfg: Config, q_block, n_k: int):
    """First key block the query block sees under the sliding window (0 without one)."""
    if cfg.window is None:
        return 0
    first_key = q_block * cfg.block_q + cfg.offset - cfg.window + 1  # smallest key its first query sees
    return jnp.clip(jax.lax.div(jnp.maximum(first_key, 0), cfg.block_k), 0, n_k)


def window_end_q_block(cfg: Config, k_block, n_q: int):
    """One past the last query block that sees the key block under the sliding window (n_q without one)."""
    if cfg.window is None:
        return n_q
    last_q = (k_block + 1) * cfg.block_k - 1 + cfg.window - 1 - cfg.offset  # last query seeing its last key
    return jnp.clip(jax.lax.div(jnp.maximum(last_q + cfg.block_q, 0), cfg.block_q), 0, n_q)


def unmasked_kv_blocks(cfg: Config, q_block, n_k: int):
    """Key blocks [window_first_kv_block, n) that every query of the block sees whole: they skip
    the mask. Under a sliding window there are none (n = the first visible block)."""
    if cfg.window is not None:
        return window_first_kv_block(cfg, q_block, n_k)
    if cfg.segments:
        return 0
    n = n_k - 1 if cfg.kv_padded else n_k  # the padded last block always needs its mask
    if not cfg.causal:
        return n
    first = q_block * cfg.block_q + cfg.offset  # the block's first query sees keys <= first
    return jnp.clip(jax.lax.div(jnp.maximum(first + 1, 0), cfg.block_k), 0, n)


def unmasked_first_q_block(cfg: Config, k_block, n_q: int, n_k: int):
    """First query block from which on (up to window_end_q_block) every query sees the whole key
    block (no mask needed). Under a sliding window: window_end_q_block (none)."""
    if cfg.window is not None:
        return window_end_q_block(cfg, k_block, n_q)
    if cfg.segments:
        return n_q
    first = 0
    if cfg.causal:
        last_key = (k_block + 1) * cfg.block_k - 1 - cfg.offset  # the first query that sees every key
        first = jnp.clip(jax.lax.div(jnp.maximum(last_key, 0) + cfg.block_q - 1, cfg.block_q), 0, n_q)
    if cfg.kv_padded:
        first = jnp.where(k_block == n_k - 1, n_q, first)
    return first


# ---------------------------------------------------------------- padding and the custom VJP

Forward = Callable[..., tuple]  # (q, k, v, q_seg, kv_seg, cfg) -> (o, lse) on padded inputs
Backward = Callable[..., tuple]  # (q, k, v, q_seg, kv_seg, o, lse, do, cfg) -> (dq, dk, dv)


def _pad_seq(x, length: int):
    pad = length - x.shape[1]
    if pad == 0:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def build(forward: Forward, backward: Backward, default_blocks: Callable[[int, int], tuple[int, int]],
          min_block: int):
    """A platform's kernels -> flash_attention(q, k, v, ...) with padding and a custom VJP."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
    def _attend(q, k, v, q_seg, kv_seg, cfg):
        return forward(q, k, v, q_seg, kv_seg, cfg)[0]

    def _fwd(q, k, v, q_seg, kv_seg, cfg):
        o, lse = forward(q, k, v, q_seg, kv_seg, cfg)
        return o, (q, k, v, q_seg, kv_seg, o, lse)

    def _bwd(cfg, saved, do):
        q, k, v, q_seg, kv_seg, o, lse = saved
        dq, dk, dv = backward(q, k, v, q_seg, kv_seg, o, lse, do, cfg)
        return dq, dk, dv, None, None

    _attend.defvjp(_fwd, _bwd)

    def flash_attention(q, k, v, *, causal: bool = True, segment_ids=None, sm_scale: float | None = None,
                        block_q: int | None = None, block_k: int | None = None, interpret: Any = False,
                        sliding_window: int | None = None):
        """q (B, T, Hq, D), k/v (B, S, Hkv, D) -> (B, T, Hq, D) in q.dtype.

        segment_ids: (B, T) when T == S, or a pair ((B, T), (B, S)); tokens attend only within
        their segment. sliding_window W (causal only): query t sees keys s with
        t + S - T - W < s <= t + S - T. Sequences are padded internally to the block sizes.
        """
        check_inputs(q, k, v, segment_ids)
        if sliding_window is not None and (not causal or sliding_window < 1):
            raise ValueError(f"flash_attention: sliding_window {sliding_window} needs causal=True and >= 1")
        t, s, d = q.shape[1], k.shape[1], q.shape[3]
        dq_, dk_ = default_blocks(d, q.dtype.itemsize)
        bq = pick_block(block_q or dq_, t, min_block)
        bk = pick_block(block_k or dk_, s, min_block)
        for name, blk in (("block_q", bq), ("block_k", bk)):
            if blk < min_block or blk & (blk - 1):
                raise ValueError(f"flash_attention: {name} must be a power of two >= {min_block}, got {blk}")
        cfg = Config(causal=causal, sm_scale=float(sm_scale if sm_scale is not None else 1 / math.sqrt(d)),
                     block_q=bq, block_k=bk, seq_q=t, seq_k=s, groups=q.shape[2] // k.shape[2], head_dim=d,
                     interpret=interpret, segments=segment_ids is not None,
                     window=sliding_window if sliding_window is not None and sliding_window < s else None)
        tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
        q_seg = kv_seg = None
        if segment_ids is not None:
            q_seg, kv_seg = (_pad_seq(x.astype(jnp.int32), n) for x, n in zip(split_segments(segment_ids), (tp, sp)))
        o = _attend(_pad_seq(q, tp), _pad_seq(k, sp), _pad_seq(v, sp), q_seg, kv_seg, cfg)
        return o[:, :t]

    return flash_attention
