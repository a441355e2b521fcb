"""RMSNorm for GPU: Pallas lowered through Triton.

Triton needs every loaded tile to be a power of two, and model widths (1280, 1536, 3072) and
head dims (96) are not, so each program loads a (block_rows, next_pow2(D)) tile with a mask
and never copies the input to pad it. The refs are the whole arrays; a program computes its
own row indices. Backward: a fixed number of programs each walk a strided set of row blocks,
keep their dweight partial sum in registers, and write one row of partials (summed by XLA).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.rmsnorm import common

MAX_TILE = 8192  # elements per loaded tile (block_rows * padded D)
BWD_PROGRAMS = 512  # programs in the backward pass (a few per SM on an H100/H200)


def _block_rows(opts: common.NormOptions, dp: int) -> int:
    if opts.block_rows is not None:
        if opts.block_rows & (opts.block_rows - 1):
            raise ValueError(f"rms_norm (gpu): block_rows must be a power of two, got {opts.block_rows}")
        return opts.block_rows
    return max(1, min(64, MAX_TILE // dp))


def _tile(i, block_rows: int, n_rows: int, d: int, dp: int):
    rows = i * block_rows + jnp.arange(block_rows)
    cols = jnp.arange(dp)
    mask = (rows < n_rows)[:, None] & (cols < d)[None, :]
    return rows, (rows[:, None], cols[None, :]), mask


def _forward_kernel(*refs, eps: float, d: int, dp: int, block_rows: int, n_rows: int, residual: bool):
    if residual:
        x_ref, r_ref, w_ref, y_ref, h_ref, rstd_ref = refs
    else:
        x_ref, w_ref, y_ref, rstd_ref = refs
    rows, idx, mask = _tile(pl.program_id(0), block_rows, n_rows, d, dp)
    cols = jnp.arange(dp)
    x = plgpu.load(x_ref.at[idx], mask=mask, other=0.0)
    if residual:
        x = x + plgpu.load(r_ref.at[idx], mask=mask, other=0.0)
        plgpu.store(h_ref.at[idx], x, mask=mask)
    w = plgpu.load(w_ref.at[cols], mask=cols < d, other=0.0)[None, :]
    y, rstd = common.forward_math(x, w, eps, d)
    plgpu.store(y_ref.at[idx], y, mask=mask)
    plgpu.store(rstd_ref.at[rows], rstd[:, 0], mask=rows < n_rows)


def forward(x2, res2, w, eps: float, opts: common.NormOptions):
    n_rows, d = x2.shape
    dp = pl.next_power_of_2(d)
    block_rows = _block_rows(opts, dp)
    residual = res2 is not None
    kernel = functools.partial(_forward_kernel, eps=eps, d=d, dp=dp, block_rows=block_rows, n_rows=n_rows,
                               residual=residual)
    row = jax.ShapeDtypeStruct(x2.shape, x2.dtype)
    out_shape = [row] + ([row] if residual else []) + [jax.ShapeDtypeStruct((n_rows,), jnp.float32)]
    outs = pl.pallas_call(
        kernel, out_shape=out_shape, grid=(pl.cdiv(n_rows, block_rows),), interpret=opts.interpret,
        compiler_params=plgpu.CompilerParams(num_warps=_num_warps(block_rows * dp)), name="rms_norm_fwd",
    )(*([x2, res2, w] if residual else [x2, w]))
    y2, h2, rstd = outs if residual else (outs[0], None, outs[1])
    return y2, h2, rstd[:, None]


def _backward_kernel(*refs, d: int, dp: int, block_rows: int, n_rows: int, n_programs: int, residual: bool):
    if residual:
        h_ref, w_ref, dy_ref, rstd_ref, dh_ref, dx_ref, dw_ref = refs
    else:
        h_ref, w_ref, dy_ref, rstd_ref, dx_ref, dw_ref = refs
        dh_ref = None
    pid = pl.program_id(0)
    cols = jnp.arange(dp)
    w = plgpu.load(w_ref.at[cols], mask=cols < d, other=0.0)[None, :]

    def body(step, dw_acc):
        rows, idx, mask = _tile(pid + step * n_programs, block_rows, n_rows, d, dp)
        h = plgpu.load(h_ref.at[idx], mask=mask, other=0.0)
        dy = plgpu.load(dy_ref.at[idx], mask=mask, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=rows < n_rows, other=0.0)[:, None]
        dx, dw = common.backward_math(h, w, dy, rstd, d)
        if dh_ref is not None:
            dx = dx + plgpu.load(dh_ref.at[idx], mask=mask, other=0.0).astype(jnp.float32)
        plgpu.store(dx_ref.at[idx], dx.astype(dx_ref.dtype), mask=mask)
        return dw_acc + jnp.sum(jnp.where(mask, dw, 0.0), axis=0)

    n_blocks = pl.cdiv(n_rows, block_rows)
    steps = jax.lax.div(n_blocks - pid + n_programs - 1, n_programs)  # blocks pid, pid + P, pid + 2P, ...
    dw = jax.lax.fori_loop(0, steps, body, jnp.zeros((dp,), jnp.float32))
    plgpu.store(dw_ref.at[pid, cols], dw, mask=cols < d)


def backward(h2, w, dy2, rstd, dh2, opts: common.NormOptions):
    n_rows, d = h2.shape
    dp = pl.next_power_of_2(d)
    block_rows = _block_rows(opts, dp)
    n_programs = min(pl.cdiv(n_rows, block_rows), BWD_PROGRAMS)
    residual = dh2 is not None
    kernel = functools.partial(_backward_kernel, d=d, dp=dp, block_rows=block_rows, n_rows=n_rows,
                               n_programs=n_programs, residual=residual)
    args = [h2, w, dy2, rstd[:, 0]] + ([dh2] if residual else [])
    dx2, dw_parts = pl.pallas_call(
        kernel, out_shape=[jax.ShapeDtypeStruct(h2.shape, h2.dtype),
                           jax.ShapeDtypeStruct((n_programs, d), jnp.float32)],
        grid=(n_programs,), interpret=opts.interpret,
        compiler_params=plgpu.CompilerParams(num_warps=_num_warps(block_rows * dp)), name="rms_norm_bwd",
    )(*args)
    return dx2, jnp.sum(dw_parts, axis=0)


def _num_warps(tile: int) -> int:
    return 4 if tile <= 2048 else 8


rms_norm, rms_norm_residual = common.build(forward, backward)
