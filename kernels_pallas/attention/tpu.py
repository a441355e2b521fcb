"""Flash attention for TPU: Pallas lowered through Mosaic, layout (B, H, T, D) inside.

Mosaic blocks must have their last two dims divisible by (8, 128) or equal to the array's, so
the kernels work on (B, H, T, D) (a (block, D) tile with D whole: head_dim 64/96 need no
padding) and the wrapper transposes from the model's (B, T, H, D). The key (or query)
blocks are the last, "arbitrary" grid axis, and the running max, sum and accumulator live in
VMEM scratch across it. Causally skipped blocks do no work, and their index maps repeat the
previous block index so the pipeline fetches nothing new. GQA: a kv head's block index is
h // G; dk/dv iterate over the G query heads of their kv head on the inner grid axis.
Segment ids come in lane/sublane-broadcast form ((B, T, 128) and (B, 8, S)) so their blocks
are legal tiles; lse and delta are (B, H, T, 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.attention import common

MIN_BLOCK = 128  # lane width: smaller key blocks would make (block_q, block_k) tiles lane-sparse
LANES, SUBLANES = 128, 8


def default_blocks(head_dim: int, itemsize: int) -> tuple[int, int]:
    """(block_q, block_k): 512 x 512 fills the MXU and keeps the pipeline's VMEM use ~ a few MiB."""
    return 512, 512


def _bhtd(x):  # (B, T, H, D) -> (B, H, T, D)
    return jnp.swapaxes(x, 1, 2)


def _segments(cfg, q_seg, kv_seg):
    if not cfg.segments:
        return []
    return [jnp.broadcast_to(q_seg[:, :, None], q_seg.shape + (LANES,)),
            jnp.broadcast_to(kv_seg[:, None, :], (kv_seg.shape[0], SUBLANES, kv_seg.shape[1]))]


def _with_optional_segments(kernel, cfg, n_inputs, *refs):
    if not cfg.segments:
        refs = refs[:n_inputs] + (None, None) + refs[n_inputs:]
    return kernel(*refs, cfg=cfg)


def _mask(cfg, i, j, qs_ref, ks_ref):
    """The (block_q, block_k) mask of query block i against key block j."""
    q_seg = kv_seg = None
    if qs_ref is not None:
        q_seg, kv_seg = qs_ref[...][:, :1], ks_ref[...][:1, :]  # (bq, 1), (1, bk)
    return common.block_mask(cfg, i * cfg.block_q, j * cfg.block_k, cfg.block_q, cfg.block_k, q_seg, kv_seg)


def _masked_or_not(j, first, n_unmasked, n_visible, accumulate):
    """Run accumulate(masked=False) for key blocks in [first, n_unmasked), accumulate(masked=True)
    in [n_unmasked, n_visible); first is 0, or the first block inside a sliding window."""
    pl.when(jnp.logical_and(j >= first, j < n_unmasked))(lambda: accumulate(False))
    pl.when(jnp.logical_and(j >= n_unmasked, j < n_visible))(lambda: accumulate(True))


# ---------------------------------------------------------------- forward

def _forward_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *, cfg):
    i, j = pl.program_id(2), pl.program_id(3)
    n_k = pl.num_programs(3)

    @pl.when(j == 0)
    def _():
        m_sc[...] = jnp.full(m_sc.shape, common.MASK_VALUE, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    def accumulate(masked):
        mask = _mask(cfg, i, j, qs_ref, ks_ref) if masked else None
        s = common.scores(q_ref[...], k_ref[...], cfg)
        m, l, acc = common.softmax_step(m_sc[...], l_sc[...], acc_sc[...], s, mask, v_ref[...])
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    _masked_or_not(j, common.window_first_kv_block(cfg, i, n_k), common.unmasked_kv_blocks(cfg, i, n_k),
                   common.causal_kv_blocks(cfg, i, n_k), accumulate)

    @pl.when(j == n_k - 1)
    def _():
        o, lse = common.finalize(m_sc[...], l_sc[...], acc_sc[...])
        o_ref[...] = o.astype(o_ref.dtype)
        lse_ref[...] = lse


def _kv_index(cfg, i, j, n_k):
    """Key block to fetch at step j for query block i: skipped blocks repeat a needed one (before
    a sliding window: its first block; after the causal diagonal: the last)."""
    if not cfg.causal:
        return j
    if cfg.window is not None:
        j = jnp.maximum(j, common.window_first_kv_block(cfg, i, n_k))
    return jnp.minimum(j, jnp.maximum(common.causal_kv_blocks(cfg, i, n_k) - 1, 0))


def forward(q, k, v, q_seg, kv_seg, cfg: common.Config):
    b, tp, hq, d = q.shape
    sp = k.shape[1]
    bq, bk, g = cfg.block_q, cfg.block_k, cfg.groups
    n_q, n_k = tp // bq, sp // bk
    kv = lambda b_, h, i, j: (b_, jax.lax.div(h, g), _kv_index(cfg, i, j, n_k), 0)  # noqa: E731
    q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0))
    seg_specs = [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j: (b_, i, 0)),
                 pl.BlockSpec((None, SUBLANES, bk), lambda b_, h, i, j: (b_, 0, _kv_index(cfg, i, j, n_k)))]
    o, lse = pl.pallas_call(
        functools.partial(_with_optional_segments, _forward_kernel, cfg, 3),
        grid=(b, hq, n_q, n_k),
        in_specs=[q_spec, pl.BlockSpec((None, None, bk, d), kv), pl.BlockSpec((None, None, bk, d), kv)]
        + (seg_specs if cfg.segments else []),
        out_specs=[q_spec, pl.BlockSpec((None, None, bq, 1), lambda b_, h, i, j: (b_, h, i, 0))],
        out_shape=[jax.ShapeDtypeStruct((b, hq, tp, d), q.dtype), jax.ShapeDtypeStruct((b, hq, tp, 1), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, d), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret, name="flash_attention_fwd",
    )(_bhtd(q), _bhtd(k), _bhtd(v), *_segments(cfg, q_seg, kv_seg))
    return _bhtd(o), lse


# ---------------------------------------------------------------- backward

def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dq_ref, dq_sc, *, cfg):
    i, j = pl.program_id(2), pl.program_id(3)
    n_k = pl.num_programs(3)

    @pl.when(j == 0)
    def _():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    def accumulate(masked):
        mask = _mask(cfg, i, j, qs_ref, ks_ref) if masked else None
        k, v = k_ref[...], v_ref[...]
        _, ds = common.probs_and_dscores(common.scores(q_ref[...], k, cfg), mask, lse_ref[...], delta_ref[...],
                                         do_ref[...], v)
        dq_sc[...] += jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    _masked_or_not(j, common.window_first_kv_block(cfg, i, n_k), common.unmasked_kv_blocks(cfg, i, n_k),
                   common.causal_kv_blocks(cfg, i, n_k), accumulate)

    @pl.when(j == n_k - 1)
    def _():
        dq_ref[...] = (dq_sc[...] * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dk_ref, dv_ref, dk_sc, dv_sc, *,
                cfg):
    j, step = pl.program_id(2), pl.program_id(3)  # step runs over (query head in group, query block)
    n_steps = pl.num_programs(3)
    n_q = jax.lax.div(n_steps, cfg.groups)
    i = jax.lax.rem(step, n_q)  # lax.rem/div: plain integer ops (no floor-mod fix-up) for Mosaic

    @pl.when(step == 0)
    def _():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    def accumulate(masked):
        mask = _mask(cfg, i, j, qs_ref, ks_ref) if masked else None
        q, do = q_ref[...], do_ref[...]
        p, ds = common.probs_and_dscores(common.scores(q, k_ref[...], cfg), mask, lse_ref[...], delta_ref[...],
                                         do, v_ref[...])
        dv_sc[...] += jax.lax.dot_general(p.astype(do.dtype), do, common.TN, preferred_element_type=jnp.float32)
        dk_sc[...] += jax.lax.dot_general(ds.astype(q.dtype), q, common.TN, preferred_element_type=jnp.float32)

    full = common.unmasked_first_q_block(cfg, j, n_q, pl.num_programs(2))
    first = common.causal_first_q_block(cfg, j, n_q)
    end = common.window_end_q_block(cfg, j, n_q)  # n_q without a sliding window
    pl.when(jnp.logical_and(i >= full, i < end))(lambda: accumulate(False))
    pl.when(jnp.logical_and(i >= first, i < full))(lambda: accumulate(True))

    @pl.when(step == n_steps - 1)
    def _():
        dk_ref[...] = (dk_sc[...] * cfg.sm_scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def backward(q, k, v, q_seg, kv_seg, o, lse, do, cfg: common.Config):
    b, tp, hq, d = q.shape
    sp, hkv = k.shape[1], k.shape[2]
    bq, bk, g = cfg.block_q, cfg.block_k, cfg.groups
    n_q, n_k = tp // bq, sp // bk
    delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32))[..., None]  # (B,H,T,1)
    qt, kt, vt, dot_ = _bhtd(q), _bhtd(k), _bhtd(v), _bhtd(do)
    segs = _segments(cfg, q_seg, kv_seg)
    sem = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))

    # dq: grid (B, Hq, query block, key block).
    kv = lambda b_, h, i, j: (b_, jax.lax.div(h, g), _kv_index(cfg, i, j, n_k), 0)  # noqa: E731
    q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0))
    row_spec = pl.BlockSpec((None, None, bq, 1), lambda b_, h, i, j: (b_, h, i, 0))
    seg_specs = [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j: (b_, i, 0)),
                 pl.BlockSpec((None, SUBLANES, bk), lambda b_, h, i, j: (b_, 0, _kv_index(cfg, i, j, n_k)))]
    dq = pl.pallas_call(
        functools.partial(_with_optional_segments, _dq_kernel, cfg, 6), grid=(b, hq, n_q, n_k),
        in_specs=[q_spec, pl.BlockSpec((None, None, bk, d), kv), pl.BlockSpec((None, None, bk, d), kv), q_spec,
                  row_spec, row_spec] + (seg_specs if cfg.segments else []),
        out_specs=q_spec, out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)], compiler_params=sem,
        interpret=cfg.interpret, name="flash_attention_dq",
    )(qt, kt, vt, dot_, lse, delta, *segs)

    # dk, dv: grid (B, Hkv, key block, G * query blocks); step -> head h*G + step // n_q, block step % n_q.
    def q_block(j, step):
        i = jax.lax.rem(step, n_q)  # lax.rem/div: plain integer ops (no floor-mod fix-up) for Mosaic
        if not cfg.causal:
            return i
        i = jnp.maximum(i, common.causal_first_q_block(cfg, j, n_q))
        if cfg.window is not None:  # blocks past the window repeat its last one
            i = jnp.minimum(i, jnp.maximum(common.window_end_q_block(cfg, j, n_q) - 1, 0))
        return i

    qg = lambda b_, h, j, st: (b_, h * g + jax.lax.div(st, n_q), q_block(j, st), 0)  # noqa: E731
    k_spec = pl.BlockSpec((None, None, bk, d), lambda b_, h, j, st: (b_, h, j, 0))
    seg_specs = [pl.BlockSpec((None, bq, LANES), lambda b_, h, j, st: (b_, q_block(j, st), 0)),
                 pl.BlockSpec((None, SUBLANES, bk), lambda b_, h, j, st: (b_, 0, j))]
    dk, dv = pl.pallas_call(
        functools.partial(_with_optional_segments, _dkv_kernel, cfg, 6), grid=(b, hkv, n_k, g * n_q),
        in_specs=[pl.BlockSpec((None, None, bq, d), qg), k_spec, k_spec, pl.BlockSpec((None, None, bq, d), qg),
                  pl.BlockSpec((None, None, bq, 1), qg), pl.BlockSpec((None, None, bq, 1), qg)]
        + (seg_specs if cfg.segments else []),
        out_specs=[k_spec, k_spec],
        out_shape=[jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)], compiler_params=sem,
        interpret=cfg.interpret, name="flash_attention_dkv",
    )(qt, kt, vt, dot_, lse, delta, *segs)
    return _bhtd(dq), _bhtd(dk), _bhtd(dv)


flash_attention = common.build(forward, backward, default_blocks, MIN_BLOCK)
