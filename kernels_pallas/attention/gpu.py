"""Flash attention for GPU: Pallas lowered through Triton, layout (B, T, H, D) as the model has it.

Grid: forward and dq run one program per (batch, query head, query block) and loop over key
blocks; dk/dv run one program per (batch, kv head, key block) and loop over the G query heads
of that kv head and their query blocks, so GQA needs neither a repeated k/v nor atomics.
Triton tiles must be powers of two: head_dim 96 is loaded as a 128-wide tile with a mask
(no copy of the inputs; the masked lanes are zeros and never stored), and sequences are
padded to the block sizes by the wrapper. Causal programs stop at the last key block their
queries can see (dk/dv start at the first query block that sees their keys).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.attention import common

MIN_BLOCK = 16  # smallest tile side Triton's dot accepts


def default_blocks(head_dim: int, itemsize: int) -> tuple[int, int]:
    """(block_q, block_k). 128 x 64 keeps a 128-wide q tile, the f32 accumulator and one k/v tile in
    registers for head_dim <= 128 with 4 warps. In float32 a 128-wide (padded) head needs twice the
    shared memory: 128 x 64 asks for 354 KiB (over an H100's 227 KiB per block, as XLA's GPU compiler
    reports; tests/test_gpu_compile.py), 64 x 64 fits an A100's 163 KiB too."""
    if itemsize >= 4 and pl.next_power_of_2(head_dim) >= 128:
        return 64, 64
    return 128, 64


def _dmask(cfg):
    dp = pl.next_power_of_2(cfg.head_dim)
    return (jnp.arange(dp) < cfg.head_dim)[None, :], dp


def _load(ref, dmask):
    return plgpu.load(ref, mask=dmask, other=0.0)


def _forward_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, *, cfg: common.Config):
    bq, bk = cfg.block_q, cfg.block_k
    i = pl.program_id(2)
    dmask, dp = _dmask(cfg)
    q = _load(q_ref, dmask)
    q_seg = qs_ref[...][:, None] if cfg.segments else None

    def body(j, carry, masked):
        sl = pl.ds(j * bk, bk)
        k, v = _load(k_ref.at[sl, :], dmask), _load(v_ref.at[sl, :], dmask)
        kv_seg = ks_ref[sl][None, :] if cfg.segments else None
        mask = common.block_mask(cfg, i * bq, j * bk, bq, bk, q_seg, kv_seg) if masked else None
        return common.softmax_step(*carry, common.scores(q, k, cfg), mask, v)

    n_k = k_ref.shape[0] // bk
    init = (jnp.full((bq, 1), common.MASK_VALUE, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
            jnp.zeros((bq, dp), jnp.float32))
    carry = _two_loops(common.window_first_kv_block(cfg, i, n_k), common.unmasked_kv_blocks(cfg, i, n_k),
                       common.causal_kv_blocks(cfg, i, n_k), body, init)
    o, lse = common.finalize(*carry)
    plgpu.store(o_ref, o.astype(o_ref.dtype), mask=dmask)
    lse_ref[...] = lse[:, 0]


def _two_loops(first, n_unmasked, n_visible, body, carry):
    """Key blocks [first, n_unmasked) without the mask, then [n_unmasked, n_visible) with it
    (first: 0, or the first block inside a sliding window, which then has no unmasked blocks)."""
    carry = jax.lax.fori_loop(first, n_unmasked, functools.partial(body, masked=False), carry)
    return jax.lax.fori_loop(n_unmasked, n_visible, functools.partial(body, masked=True), carry)


def _specs(cfg, kv_full):
    """BlockSpecs for q-like (one block of queries of one head) and k-like (whole sequence) arrays."""
    dp = pl.next_power_of_2(cfg.head_dim)
    q_spec = pl.BlockSpec((None, cfg.block_q, None, dp), lambda b, h, i: (b, i, h, 0))
    kv_spec = pl.BlockSpec((None, kv_full, None, dp), lambda b, h, i: (b, 0, jax.lax.div(h, cfg.groups), 0))
    return q_spec, kv_spec


def _seg_args(cfg, q_seg, kv_seg, sp, q_block_spec):
    if not cfg.segments:
        return [], []
    kv_spec = pl.BlockSpec((None, sp), lambda b, h, i: (b, 0))
    return [q_seg, kv_seg], [q_block_spec, kv_spec]


def forward(q, k, v, q_seg, kv_seg, cfg: common.Config):
    b, tp, hq, d = q.shape
    sp = k.shape[1]
    q_spec, kv_spec = _specs(cfg, sp)
    seg_args, seg_specs = _seg_args(cfg, q_seg, kv_seg, sp,
                                    pl.BlockSpec((None, cfg.block_q), lambda b, h, i: (b, i)))
    kernel = functools.partial(_with_optional_segments, _forward_kernel, cfg, 3)
    o, lse = pl.pallas_call(
        kernel, grid=(b, hq, tp // cfg.block_q),
        in_specs=[q_spec, kv_spec, kv_spec] + seg_specs,
        out_specs=[q_spec, pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, tp), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=cfg.interpret, name="flash_attention_fwd",
    )(q, k, v, *seg_args)
    return o, lse


def _with_optional_segments(kernel, cfg, n_inputs, *refs):
    """Insert None for the two segment refs when there are no segments."""
    if not cfg.segments:
        refs = refs[:n_inputs] + (None, None) + refs[n_inputs:]
    return kernel(*refs, cfg=cfg)


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dq_ref, *, cfg: common.Config):
    bq, bk = cfg.block_q, cfg.block_k
    i = pl.program_id(2)
    dmask, dp = _dmask(cfg)
    q, do = _load(q_ref, dmask), _load(do_ref, dmask)
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_seg = qs_ref[...][:, None] if cfg.segments else None

    def body(j, dq, masked):
        sl = pl.ds(j * bk, bk)
        k, v = _load(k_ref.at[sl, :], dmask), _load(v_ref.at[sl, :], dmask)
        kv_seg = ks_ref[sl][None, :] if cfg.segments else None
        mask = common.block_mask(cfg, i * bq, j * bk, bq, bk, q_seg, kv_seg) if masked else None
        _, ds = common.probs_and_dscores(common.scores(q, k, cfg), mask, lse, delta, do, v)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

    n_k = k_ref.shape[0] // bk
    dq = _two_loops(common.window_first_kv_block(cfg, i, n_k), common.unmasked_kv_blocks(cfg, i, n_k),
                    common.causal_kv_blocks(cfg, i, n_k), body, jnp.zeros((bq, dp), jnp.float32))
    plgpu.store(dq_ref, (dq * cfg.sm_scale).astype(dq_ref.dtype), mask=dmask)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, dk_ref, dv_ref, *,
                cfg: common.Config):
    bq, bk = cfg.block_q, cfg.block_k
    j = pl.program_id(2)
    dmask, dp = _dmask(cfg)
    k, v = _load(k_ref, dmask), _load(v_ref, dmask)
    kv_seg = ks_ref[...][None, :] if cfg.segments else None
    n_q = q_ref.shape[0] // bq
    first = common.causal_first_q_block(cfg, j, n_q)

    full = common.unmasked_first_q_block(cfg, j, n_q, pl.num_programs(2))
    end = common.window_end_q_block(cfg, j, n_q)  # n_q without a sliding window

    def q_block(i, carry, g, masked):
        dk, dv = carry
        sl = pl.ds(i * bq, bq)
        q, do = _load(q_ref.at[sl, g, :], dmask), _load(do_ref.at[sl, g, :], dmask)
        lse, delta = lse_ref[g, sl][:, None], delta_ref[g, sl][:, None]
        q_seg = qs_ref[sl][:, None] if cfg.segments else None
        mask = common.block_mask(cfg, i * bq, j * bk, bq, bk, q_seg, kv_seg) if masked else None
        p, ds = common.probs_and_dscores(common.scores(q, k, cfg), mask, lse, delta, do, v)
        dv = dv + jax.lax.dot_general(p.astype(do.dtype), do, common.TN, preferred_element_type=jnp.float32)
        dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, common.TN, preferred_element_type=jnp.float32)
        return dk, dv

    def head(g, carry):  # query blocks [first, full) need the mask, [full, end) do not
        carry = jax.lax.fori_loop(first, full, functools.partial(q_block, g=g, masked=True), carry)
        return jax.lax.fori_loop(full, end, functools.partial(q_block, g=g, masked=False), carry)

    zeros = jnp.zeros((bk, dp), jnp.float32)
    dk, dv = jax.lax.fori_loop(0, cfg.groups, head, (zeros, zeros))
    plgpu.store(dk_ref, (dk * cfg.sm_scale).astype(dk_ref.dtype), mask=dmask)
    plgpu.store(dv_ref, dv.astype(dv_ref.dtype), mask=dmask)


def backward(q, k, v, q_seg, kv_seg, o, lse, do, cfg: common.Config):
    b, tp, hq, d = q.shape
    sp, hkv = k.shape[1], k.shape[2]
    dp = pl.next_power_of_2(d)
    delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32))  # (B, Hq, Tp)
    params = plgpu.CompilerParams(num_warps=4, num_stages=2)

    # dq: like the forward pass, one program per query block.
    q_spec, kv_spec = _specs(cfg, sp)
    row_spec = pl.BlockSpec((None, None, cfg.block_q), lambda b, h, i: (b, h, i))
    seg_args, seg_specs = _seg_args(cfg, q_seg, kv_seg, sp,
                                    pl.BlockSpec((None, cfg.block_q), lambda b, h, i: (b, i)))
    dq = pl.pallas_call(
        functools.partial(_with_optional_segments, _dq_kernel, cfg, 6), grid=(b, hq, tp // cfg.block_q),
        in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec] + seg_specs,
        out_specs=q_spec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), compiler_params=params,
        interpret=cfg.interpret, name="flash_attention_dq",
    )(q, k, v, do, lse, delta, *seg_args)

    # dk, dv: one program per (kv head, key block); q-like arrays cover the group's G heads.
    g = cfg.groups
    kb_spec = pl.BlockSpec((None, cfg.block_k, None, dp), lambda b, h, j: (b, j, h, 0))
    qg_spec = pl.BlockSpec((None, tp, g, dp), lambda b, h, j: (b, 0, h, 0))
    rows_spec = pl.BlockSpec((None, g, tp), lambda b, h, j: (b, h, 0))
    seg_specs = [pl.BlockSpec((None, tp), lambda b, h, j: (b, 0)),
                 pl.BlockSpec((None, cfg.block_k), lambda b, h, j: (b, j))] if cfg.segments else []
    dk, dv = pl.pallas_call(
        functools.partial(_with_optional_segments, _dkv_kernel, cfg, 6), grid=(b, hkv, sp // cfg.block_k),
        in_specs=[qg_spec, kb_spec, kb_spec, qg_spec, rows_spec, rows_spec] + seg_specs,
        out_specs=[kb_spec, kb_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=params, interpret=cfg.interpret, name="flash_attention_dkv",
    )(q, k, v, do, lse, delta, *seg_args)
    return dq, dk, dv


flash_attention = common.build(forward, backward, default_blocks, MIN_BLOCK)
