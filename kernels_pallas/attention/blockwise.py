"""Blockwise attention in plain XLA: the online softmax of flash attention, written with lax loops,
so memory is O(T·block) in the forward and the backward on any backend.

Same signature and semantics as `attention_reference` (GQA, causal by positions, segment ids,
explicit query / key positions for prefill against a cache, zeros for rows that see no key).
Layout inside: queries in blocks of bq, keys in blocks of bk, block index leading:
  q (nq, B, Hkv, G, bq, D)   k, v (nk, B, Hkv, bk, D)   positions / segments (n, B, block)
Forward: for each query block, a loop over key blocks carries the running max m,
the normaliser l and the f32 accumulator (see common.py for the update); it saves only
o and lse = m + log l. Backward (custom VJP, FlashAttention-2 math, one pass): for each key block
a loop over query blocks recomputes p = exp(s - lse), adds into dk, dv (carried)
and into the f32 dq of that query block (an in-place update of one (T)-sized buffer). So neither
pass keeps a per-block probability matrix; the largest temporaries are one (B, Hq, bq, bk) tile.
Causal: a (query block, key block) pair is skipped (lax.cond) when the smallest key position of
the key block exceeds the largest query position of the query block, so causal attention does
about half the work. A sliding window also skips a pair whose largest key position is at or
before the smallest query position minus the window (long sequences and decode against a long
cache then cost O(T·window)). Segment ids are masked, not skipped. Queries and keys that fit one
block each run straight, without loops or cond (a wholly masked pair computed gives what skipping
it gives: zero weight on every key); on a CPU the loops' bookkeeping cost 2% of a small model's
train step. Causal self-attention by index within one block runs as two halves (`_causal_halves`),
so the masked quarter is skipped without loops too.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from kernels_pallas.attention.common import MASK_VALUE, split_segments

DEFAULT_BLOCK = 512  # query and key block; one f32 score tile is B·Hq·512·512·4 bytes
_HALVES_MIN = 64  # shortest causal sequence split into halves: shorter ones stay one call
_NO_POSITION = jnp.iinfo(jnp.int32).min  # a padded query: sees no key under the causal mask
_LATE_POSITION = jnp.iinfo(jnp.int32).max  # a padded key: no query sees it under the causal mask


@dataclasses.dataclass(frozen=True)
class _Static:
    """The custom VJP's non-differentiable, hashable description of one call."""

    causal: bool
    sm_scale: float
    seq_k: int  # true key length (before padding to the key block)
    block_k: int
    window: int | None = None  # sliding window: key position > query position - window
    one_pair: bool = False  # one query block and one key block: nothing to skip


def blockwise_attention(
    q: jax.Array,  # (B, T, Hq, D)
    k: jax.Array,  # (B, S, Hkv, D)
    v: jax.Array,  # (B, S, Hkv, D)
    *,
    causal: bool = True,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,  # (B, T) or ((B, T), (B, S))
    q_positions: jax.Array | None = None,  # (B, T); default arange(T) (+ S - T when S > T)
    kv_positions: jax.Array | None = None,  # (B, S); default arange(S)
    sm_scale: float | None = None,
    block_q: int = DEFAULT_BLOCK,
    block_k: int = DEFAULT_BLOCK,
    sliding_window: int | None = None,
) -> jax.Array:
    """Softmax attention equal to `attention_reference`, in O(T·block) memory. Returns (B, T, Hq, D).

    A sequence shorter than its block is one block of its own length (no padding); longer ones
    are padded to a multiple of the block (padded keys are masked, padded queries sliced off).
    Causal self-attention by index that fits one block is run as two halves (`_causal_halves`).
    """
    options = dict(sm_scale=sm_scale, block_q=block_q, block_k=block_k)
    t = q.shape[1]
    if (causal and q_positions is None and kv_positions is None and sliding_window is None and t == k.shape[1]
            and _HALVES_MIN <= t <= min(block_q, block_k) and t % 2 == 0):
        return _causal_halves(q, k, v, segment_ids, options)
    return _blockwise(q, k, v, causal, segment_ids, q_positions, kv_positions, sliding_window, options)


def _causal_halves(q, k, v, segment_ids, options: dict):
    """Causal self-attention (positions = indices) as two one-block calls: the first half of the queries
    against the first half of the keys, the second half against all of them. The quarter left out, the
    first half's queries against the second half's keys, is all masked under causality: 25% less score
    work, and on a CPU the tiny_uniform train step took 0.95x the time at T = 128 (docs/training.md).
    Each call's default positions line up (the second half's queries sit at S - T + i)."""
    h = q.shape[1] // 2
    q_seg, kv_seg = split_segments(segment_ids) if segment_ids is not None else (None, None)
    halves = []
    for rows, keys in ((slice(0, h), slice(0, h)), (slice(h, 2 * h), slice(0, 2 * h))):
        segments = None if q_seg is None else (q_seg[:, rows], kv_seg[:, keys])
        halves.append(_blockwise(q[:, rows], k[:, keys], v[:, keys], True, segments, None, None, None, options))
    return jnp.concatenate(halves, axis=1)


def _blockwise(q, k, v, causal: bool, segment_ids, q_positions, kv_positions, sliding_window, options: dict):
    """`blockwise_attention` over blocks of queries and keys (its arguments; options: sm_scale, block_q, block_k)."""
    sm_scale, block_q, block_k = options["sm_scale"], options["block_q"], options["block_k"]
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    scale = float(sm_scale if sm_scale is not None else 1.0 / math.sqrt(d))
    if sliding_window is not None and not causal:
        raise ValueError("attention: sliding_window needs causal=True")
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(t) + (s - t), (b, t))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    qpos = _blocks(_pad(q_positions.astype(jnp.int32), tp, _NO_POSITION), bq)  # (nq, B, bq)
    kpos = _blocks(_pad(kv_positions.astype(jnp.int32), sp, _LATE_POSITION), bk)  # (nk, B, bk)
    qseg = kseg = None
    if segment_ids is not None:
        q_seg, kv_seg = split_segments(segment_ids)
        qseg = _blocks(_pad(q_seg.astype(jnp.int32), tp, -1), bq)
        kseg = _blocks(_pad(kv_seg.astype(jnp.int32), sp, -1), bk)
    qb = _blocks(_pad(q, tp, 0).reshape(b, tp, hkv, groups, d), bq)  # (nq, B, Hkv, G, bq, D)
    kb, vb = (_blocks(_pad(x, sp, 0), bk) for x in (k, v))  # (nk, B, Hkv, bk, D)
    cfg = _Static(causal=causal, sm_scale=scale, seq_k=s, block_k=bk, window=sliding_window,
                  one_pair=tp == bq and sp == bk)
    ob = _attend(qb, kb, vb, qpos, kpos, qseg, kseg, cfg)  # (nq, B, Hkv, G, bq, D)
    o = jnp.moveaxis(ob, 0, 3).reshape(b, hkv, groups, tp, d)[:, :, :, :t]  # (B, Hkv, G, T, D)
    return jnp.transpose(o, (0, 3, 1, 2, 4)).reshape(b, t, hq, d)


def _pad(x, length: int, value):
    pad = length - x.shape[1]
    if pad == 0:
        return x
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _blocks(x, block: int):
    """(B, L, ...) -> (L / block, B, ..., block, last) for 4-D+ inputs, (L / block, B, block) for (B, L).

    The sequence block moves next to the last (head_dim) axis, so every per-block matmul
    reads (block, D) tiles.
    """
    b, length = x.shape[:2]
    x = x.reshape((b, length // block, block) + x.shape[2:])
    if x.ndim == 3:  # (B, n, block)
        return jnp.swapaxes(x, 0, 1)
    # (B, n, block, *heads, D) -> (n, B, *heads, block, D)
    heads = tuple(range(3, x.ndim - 1))
    return jnp.transpose(x, (1, 0) + heads + (2, x.ndim - 1))


# ---------------------------------------------------------------- per-block math

def _mask(cfg: _Static, j, qpos, kpos, qseg, kseg):
    """(B, 1, 1, bq, bk) bool for query block positions qpos (B, bq) and key block j, or None."""
    mask = None
    if cfg.causal:
        mask = kpos[:, None, :] <= qpos[:, :, None]
        if cfg.window is not None:  # padded positions are hidden by the causal part already
            mask &= kpos[:, None, :] > qpos[:, :, None] - cfg.window
    elif cfg.seq_k % cfg.block_k:  # causal already hides padded keys (their position is the largest)
        mask = (j * cfg.block_k + jnp.arange(cfg.block_k) < cfg.seq_k)[None, None, :]
    if qseg is not None:
        same = qseg[:, :, None] == kseg[:, None, :]
        mask = same if mask is None else mask & same
    return None if mask is None else mask[:, None, None]


def _scores(q, k, cfg: _Static):
    """q (B, Hkv, G, bq, D), k (B, Hkv, bk, D) -> scale q k^T (B, Hkv, G, bq, bk) in float32."""
    return jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32) * cfg.sm_scale


def _bounds(qpos, kpos):
    """Per block, over the batch, padding left out: smallest and largest query position (nq,) and
    key position (nk,). Reduced once, outside the loops, so a batch-sharded program does not
    all-reduce inside them."""
    q_lo = jnp.min(jnp.where(qpos == _NO_POSITION, _LATE_POSITION, qpos), axis=(1, 2))
    k_hi = jnp.max(jnp.where(kpos == _LATE_POSITION, _NO_POSITION, kpos), axis=(1, 2))
    return (q_lo, jnp.max(qpos, axis=(1, 2))), (jnp.min(kpos, axis=(1, 2)), k_hi)


def _maybe(cfg: _Static, q_bounds, k_bounds, step, carry):
    """step(carry) unless masking hides the whole block pair: its smallest key position is after
    its largest query position (causal), or its largest key position is at or before its smallest
    query position minus the window. Then carry, unchanged. Bounds: (lo, hi) of one block."""
    if not cfg.causal or cfg.one_pair:
        return step(carry)
    (q_lo, q_hi), (k_lo, k_hi) = q_bounds, k_bounds
    visible = k_lo <= q_hi
    if cfg.window is not None:
        visible &= k_hi > q_lo - cfg.window
    return jax.lax.cond(visible, step, lambda c: c, carry)


# ---------------------------------------------------------------- loops

# The loops are while loops, not scans (a fori_loop with static bounds and lax.map are scans).
# Under jax.grad, JAX's scan partial evaluation hoists work that depends only on an enclosing
# scan's constants out of it; inside the model's layer scan that is every block pair's position
# mask (and the constant operands of the selects), stacked over all (query block, key block)
# pairs: O(T^2) memory again. A while loop is not split that way, and nothing differentiates
# these loops (the custom VJP does).

def _fori(n: int, body, init):
    """lax.fori_loop(0, n, body, init) as a while loop; one iteration runs without the loop."""
    if n == 1:
        return body(jnp.int32(0), init)
    return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, body(c[0], c[1])), (jnp.int32(0), init))[1]


def _scan(body, init, xs):
    """lax.scan(body, init, xs) as a while loop; the ys are written into preallocated buffers."""
    n = jax.tree.leaves(xs)[0].shape[0]
    take = lambda i: jax.tree.map(lambda x: x[i], xs)  # noqa: E731
    y_avals = jax.eval_shape(lambda c, x: body(c, x)[1], init, take(0))
    ys = jax.tree.map(lambda a: jnp.zeros((n,) + a.shape, a.dtype), y_avals)

    def step(i, carry):
        c, ys = carry
        c, y = body(c, take(i))
        return c, jax.tree.map(lambda buf, v: buf.at[i].set(v), ys, y)

    return _fori(n, step, (init, ys))


def _map(f, xs):
    """lax.map(f, xs) as a while loop."""
    return _scan(lambda c, x: (c, f(x)), (), xs)[1]


# ---------------------------------------------------------------- forward, backward, custom VJP

def _forward(qb, kb, vb, qpos, kpos, qseg, kseg, cfg: _Static):
    """-> o (nq, B, Hkv, G, bq, D) in q.dtype, lse (nq, B, Hkv, G, bq) float32."""
    n_k = kb.shape[0]
    (q_los, q_his), (k_los, k_his) = _bounds(qpos, kpos)  # (nq,) each, (nk,) each

    def query_block(xs):
        q, qp, qs, q_lo, q_hi = xs

        def key_block(j, carry):
            def step(carry):
                m, l, acc = carry
                s = _scores(q, kb[j], cfg)
                mask = _mask(cfg, j, qp, kpos[j], qs, None if kseg is None else kseg[j])
                if mask is not None:
                    s = jnp.where(mask, s, MASK_VALUE)
                m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
                p = jnp.exp(s - m_new)
                if mask is not None:
                    p = jnp.where(mask, p, 0.0)
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)
                return m_new, alpha * l + jnp.sum(p, axis=-1, keepdims=True), alpha * acc + pv

            return _maybe(cfg, (q_lo, q_hi), (k_los[j], k_his[j]), step, carry)

        stat = q.shape[:-1] + (1,)  # (B, Hkv, G, bq, 1)
        init = (jnp.full(stat, MASK_VALUE, jnp.float32), jnp.zeros(stat, jnp.float32),
                jnp.zeros(q.shape, jnp.float32))
        m, l, acc = _fori(n_k, key_block, init)
        empty = l == 0.0  # a row that saw no key: o = 0, lse = 0 (not NaN)
        o = acc / jnp.where(empty, 1.0, l)
        lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
        return o.astype(q.dtype), lse[..., 0]

    return _map(query_block, (qb, qpos, qseg, q_los, q_his))


def _backward(qb, kb, vb, qpos, kpos, qseg, kseg, ob, lse, dob, cfg: _Static):
    """FlashAttention-2 backward, one pass over key blocks -> dq, dk, dv in the inputs' dtypes."""
    n_q = qb.shape[0]
    delta = jnp.sum(ob.astype(jnp.float32) * dob.astype(jnp.float32), axis=-1)  # (nq, B, Hkv, G, bq)
    (q_lo, q_hi), (k_los, k_his) = _bounds(qpos, kpos)  # as in the forward

    def key_block(dq, xs):
        k, v, kp, ks, k_lo, k_hi, j = xs

        def query_block(i, carry):
            def step(carry):
                dq, dk, dv = carry
                q, do = qb[i], dob[i]
                s = _scores(q, k, cfg)
                mask = _mask(cfg, j, qpos[i], kp, None if qseg is None else qseg[i], ks)
                p = jnp.exp(s - lse[i][..., None])
                if mask is not None:
                    p = jnp.where(mask, p, 0.0)
                dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(do.dtype), do, preferred_element_type=jnp.float32)
                dp = jnp.einsum("bkgqd,bksd->bkgqs", do, v, preferred_element_type=jnp.float32)
                ds = p * (dp - delta[i][..., None])  # (B, Hkv, G, bq, bk), without the scale
                dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
                dq_i = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
                return dq.at[i].add(dq_i), dk, dv

            return _maybe(cfg, (q_lo[i], q_hi[i]), (k_lo, k_hi), step, carry)

        zeros = jnp.zeros(k.shape, jnp.float32)
        dq, dk, dv = _fori(n_q, query_block, (dq, zeros, zeros))
        return dq, (dk * cfg.sm_scale, dv)

    xs = (kb, vb, kpos, kseg, k_los, k_his, jnp.arange(kb.shape[0]))
    dq, (dk, dv) = _scan(key_block, jnp.zeros(qb.shape, jnp.float32), xs)
    return (dq * cfg.sm_scale).astype(qb.dtype), dk.astype(kb.dtype), dv.astype(vb.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attend(qb, kb, vb, qpos, kpos, qseg, kseg, cfg):
    return _forward(qb, kb, vb, qpos, kpos, qseg, kseg, cfg)[0]


def _attend_fwd(qb, kb, vb, qpos, kpos, qseg, kseg, cfg):
    ob, lse = _forward(qb, kb, vb, qpos, kpos, qseg, kseg, cfg)
    return ob, (qb, kb, vb, qpos, kpos, qseg, kseg, ob, lse)


def _attend_bwd(cfg, saved, dob):
    qb, kb, vb, qpos, kpos, qseg, kseg, ob, lse = saved
    dq, dk, dv = _backward(qb, kb, vb, qpos, kpos, qseg, kseg, ob, lse, dob, cfg)
    return dq, dk, dv, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)
