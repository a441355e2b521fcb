"""Quantized matmul for GPU: Pallas lowered through Triton.

Grid (M blocks, N blocks); each program loops over K in blocks of block_k rows, Triton style,
with its (block_m, block_n) float32 accumulator in registers. A step loads (block_k / per_byte,
block_n) packed uint8 codes and the one scale (and zero) row of their group, dequantizes them in
registers and feeds tl.dot; the float weight never exists in memory. A K block never straddles
a group (block_k divides g), so one scale row serves the whole block.
Triton tiles are powers of two and tl.dot needs every side >= 16: block_m >= 16 (M is padded to
it and sliced back; decode pads 1..8 rows to 16), block_n a power of two dividing N, and
block_k / per_byte >= 16.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.qmatmul import common

MIN_TILE = 16  # smallest side tl.dot accepts
MAX_BLOCK_M, MAX_BLOCK_N, MAX_BLOCK_K = 64, 128, 128


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _largest_pow2_divisor(n: int, cap: int) -> int:
    return min(n & -n, cap)


def blocks(m: int, k: int, n: int, g: int, bits: int, block_m=None, block_n=None, block_k=None):
    """(block_m, block_n, block_k), defaults filled in and given ones checked."""
    per_byte = common.PER_BYTE[bits]
    if block_m is None:
        block_m = min(MAX_BLOCK_M, max(MIN_TILE, pl.next_power_of_2(m)))
    elif not _pow2(block_m) or block_m < MIN_TILE:
        raise ValueError(f"qmatmul (gpu): block_m must be a power of two >= {MIN_TILE}, got {block_m}")
    if block_n is None:
        block_n = _largest_pow2_divisor(n, MAX_BLOCK_N)
    if not _pow2(block_n) or block_n < MIN_TILE or n % block_n:
        raise ValueError(f"qmatmul (gpu): block_n must be a power of two >= {MIN_TILE} dividing N = {n}, got "
                         f"{block_n}" + ("" if n % MIN_TILE == 0 else f"; N must be a multiple of {MIN_TILE}"))
    if block_k is None:
        block_k = _largest_pow2_divisor(g, MAX_BLOCK_K)
    if not _pow2(block_k) or g % block_k or block_k // per_byte < MIN_TILE:
        raise ValueError(f"qmatmul (gpu): block_k must be a power of two dividing the group size {g} with "
                         f"block_k / {per_byte} >= {MIN_TILE} at {bits} bits, got {block_k}"
                         + ("" if g % (MIN_TILE * per_byte) == 0 else
                            f"; K = {k} and its group size must be multiples of {MIN_TILE * per_byte}"))
    return block_m, block_n, block_k


def _kernel(*refs, bits: int, n_x: int, asymmetric: bool, block_k: int, g: int, precision):
    x_refs, (c_ref, s_ref), rest = refs[:n_x], refs[n_x:n_x + 2], refs[n_x + 2:]
    z_ref, o_ref = (rest[0], rest[1]) if asymmetric else (None, rest[0])
    bkp = block_k // common.PER_BYTE[bits]
    x_dtype = x_refs[0].dtype

    def body(kb, acc):
        rows = pl.ds(kb * bkp, bkp)
        group = pl.ds(jax.lax.div(kb, g // block_k), 1)
        zero = None if z_ref is None else z_ref[group, :]
        weights = common.dequantize_block(c_ref[rows, :], s_ref[group, :], zero, bits, x_dtype)
        for x_ref, w in zip(x_refs, weights):  # 4 bits: x_even @ W_lo + x_odd @ W_hi
            acc = acc + jnp.dot(x_ref[:, rows], w, preferred_element_type=jnp.float32, precision=precision)
        return acc

    n_k = c_ref.shape[0] // bkp
    acc = jax.lax.fori_loop(0, n_k, body, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def qmatmul(x, codes, scale, zero, *, bits: int, out_dtype=None, block_m=None, block_n=None, block_k=None,
            interpret=False):
    """x (M, K) float32 / bfloat16, codes (K / per_byte, N) uint8, scale / zero (K / g, N) -> (M, N) in
    out_dtype (default x.dtype), float32 accumulation."""
    m, k, n, per_byte, g = common.matrix_dims(x, codes, scale, zero, bits, "gpu")
    bm, bn, bk = blocks(m, k, n, g, bits, block_m, block_n, block_k)
    mp = common.round_up(m, bm)
    xs = common.padded_split(x, mp, bits)
    params = [scale] + ([] if zero is None else [zero])
    out_dtype = jnp.dtype(out_dtype or x.dtype)

    x_spec = pl.BlockSpec((bm, k // per_byte), lambda i, j: (i, 0))
    c_spec = pl.BlockSpec((k // per_byte, bn), lambda i, j: (0, j))
    p_spec = pl.BlockSpec((k // g, bn), lambda i, j: (0, j))
    kernel = functools.partial(_kernel, bits=bits, n_x=len(xs), asymmetric=zero is not None, block_k=bk, g=g,
                               precision=common.dot_precision(x.dtype))
    y = pl.pallas_call(
        kernel, grid=(mp // bm, n // bn),
        in_specs=[x_spec] * len(xs) + [c_spec] + [p_spec] * len(params),
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((mp, n), out_dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=3),
        interpret=interpret, name=f"qmatmul_int{bits}",
    )(*xs, codes, *params)
    return y[:m] if mp > m else y
