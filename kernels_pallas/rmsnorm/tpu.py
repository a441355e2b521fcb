"""RMSNorm for TPU: Pallas lowered through Mosaic.

Blocks are (block_rows, D): the feature axis is whole (Mosaic accepts a block dim equal to the
array dim, so D = 64 or 96 needs no padding), block_rows is a multiple of 8 (sublanes).
The last row block may run past the array: its extra rows are never stored, and the dweight
reduction masks them (they hold whatever was in VMEM). dweight accumulates in one resident
(1, D) float32 output block across the row grid, so that grid axis is "arbitrary" (sequential).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.rmsnorm import common

MAX_BLOCK_BYTES = 1 << 20  # per input block in VMEM (double-buffered by the pipeline)


def _block_rows(opts: common.NormOptions, n_rows: int, d: int) -> int:
    if opts.block_rows is not None:
        if opts.block_rows % 8:
            raise ValueError(f"rms_norm (tpu): block_rows must be a multiple of 8, got {opts.block_rows}")
        return opts.block_rows
    rows = max(8, min(1024, MAX_BLOCK_BYTES // (4 * d)) // 8 * 8)
    return min(rows, -(-n_rows // 8) * 8)


def _forward_kernel(*refs, eps: float, d: int, residual: bool):
    if residual:
        x_ref, r_ref, w_ref, y_ref, h_ref, rstd_ref = refs
        x = x_ref[...] + r_ref[...]
        h_ref[...] = x
    else:
        x_ref, w_ref, y_ref, rstd_ref = refs
        x = x_ref[...]
    y, rstd = common.forward_math(x, w_ref[...], eps, d)
    y_ref[...] = y
    rstd_ref[...] = rstd


def forward(x2, res2, w, eps: float, opts: common.NormOptions):
    n_rows, d = x2.shape
    block_rows = _block_rows(opts, n_rows, d)
    residual = res2 is not None
    row_spec = pl.BlockSpec((block_rows, d), lambda i: (i, 0))
    w_spec = pl.BlockSpec((1, d), lambda i: (0, 0))
    rstd_spec = pl.BlockSpec((block_rows, 1), lambda i: (i, 0))
    row = jax.ShapeDtypeStruct(x2.shape, x2.dtype)
    outs = pl.pallas_call(
        functools.partial(_forward_kernel, eps=eps, d=d, residual=residual),
        out_shape=[row] + ([row] if residual else []) + [jax.ShapeDtypeStruct((n_rows, 1), jnp.float32)],
        grid=(pl.cdiv(n_rows, block_rows),),
        in_specs=[row_spec] * (2 if residual else 1) + [w_spec],
        out_specs=[row_spec] * (2 if residual else 1) + [rstd_spec],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=opts.interpret, name="rms_norm_fwd",
    )(*([x2, res2] if residual else [x2]), w.reshape(1, d))
    y2, h2, rstd = outs if residual else (outs[0], None, outs[1])
    return y2, h2, rstd


def _backward_kernel(*refs, d: int, block_rows: int, n_rows: int, residual: bool):
    if residual:
        h_ref, w_ref, dy_ref, rstd_ref, dh_ref, dx_ref, dw_ref = refs
    else:
        h_ref, w_ref, dy_ref, rstd_ref, dx_ref, dw_ref = refs
    i = pl.program_id(0)
    dx, dw = common.backward_math(h_ref[...], w_ref[...], dy_ref[...], rstd_ref[...], d)
    if residual:
        dx = dx + dh_ref[...].astype(jnp.float32)
    dx_ref[...] = dx.astype(dx_ref.dtype)
    rows = i * block_rows + jax.lax.broadcasted_iota(jnp.int32, dw.shape, 0)
    dw_block = jnp.sum(jnp.where(rows < n_rows, dw, 0.0), axis=0, keepdims=True)

    @pl.when(i == 0)
    def _():
        dw_ref[...] = jnp.zeros_like(dw_ref)

    dw_ref[...] += dw_block


def backward(h2, w, dy2, rstd, dh2, opts: common.NormOptions):
    n_rows, d = h2.shape
    block_rows = _block_rows(opts, n_rows, d)
    residual = dh2 is not None
    row_spec = pl.BlockSpec((block_rows, d), lambda i: (i, 0))
    vec_spec = pl.BlockSpec((1, d), lambda i: (0, 0))
    rstd_spec = pl.BlockSpec((block_rows, 1), lambda i: (i, 0))
    dx2, dw = pl.pallas_call(
        functools.partial(_backward_kernel, d=d, block_rows=block_rows, n_rows=n_rows, residual=residual),
        out_shape=[jax.ShapeDtypeStruct(h2.shape, h2.dtype), jax.ShapeDtypeStruct((1, d), jnp.float32)],
        grid=(pl.cdiv(n_rows, block_rows),),
        in_specs=[row_spec, vec_spec, row_spec, rstd_spec] + ([row_spec] if residual else []),
        out_specs=[row_spec, vec_spec],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("arbitrary",)),
        interpret=opts.interpret, name="rms_norm_bwd",
    )(h2, w.reshape(1, d), dy2, rstd, *([dh2] if residual else []))
    return dx2, dw[0]


rms_norm, rms_norm_residual = common.build(forward, backward)
