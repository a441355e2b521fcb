"""Quantized matmul for TPU: Pallas lowered through Mosaic.

Grid (M blocks, N blocks, K blocks), K last and "arbitrary": a (block_m, block_n) float32 VMEM
accumulator lives across it and is written out, cast, at the last K block. Each step DMAs one
block of packed codes (block_k / per_byte, block_n) uint8 and its scale (and zero) rows into VMEM,
dequantizes them there and feeds the MXU; the float weight never exists in HBM.

Legal Mosaic blocks (last two dims multiples of (8, 128), or the array's own): block_n is a
multiple of 128 dividing N, or N; block_k / per_byte is a multiple of 128 dividing K / per_byte,
or all of K; block_m is all of M up to 256 rows (so decode, M = 1..8, needs no padding), else 256
(a multiple of 8 for float32 x, 16 for bfloat16) with M padded and sliced back. Scales and zero
points keep their storage dtype (4 bits: float16 scales travel as their uint16 bits, as Mosaic
on v5e cannot load float16, and are decoded in the kernel); their (block_k / g, block_n) blocks are
legal when K is one block (the default whenever block_k * block_n <= MAX_TILE allows it) or
block_k / g is a multiple of the sublane tile, and otherwise go in reshaped to 3-D so that a block
covers the last two dims whole (a small copy of the scales: see _group_params).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.qmatmul import common

LANES = 128
MAX_BLOCK_M = 256
BLOCK_N = (512, 256, 128)  # tried in order: the largest that divides N
MAX_TILE = 1 << 20  # block_k * block_n weights per step: 512 KiB of int4 codes, 4 MiB dequantized in float32


def _sublanes(dtype) -> int:
    return 8 * 4 // jnp.dtype(dtype).itemsize  # rows of a tile: 8 for 32-bit, 16 for 16-bit, 32 for 8-bit


def _legal_k(k: int, g: int, per_byte: int):
    """Block sizes along K that divide K, fit the groups, and give lane-aligned x and code blocks."""
    step = LANES * per_byte
    sizes = [b for b in range(step, k, step) if k % b == 0 and (b % g == 0 or g % b == 0)]
    return sizes + [k]  # all of K is always a legal block


def blocks(m: int, k: int, n: int, g: int, bits: int, x_dtype, block_m=None, block_n=None, block_k=None):
    """(block_m, block_n, block_k), defaults filled in and given ones checked."""
    sub, per_byte = _sublanes(x_dtype), common.PER_BYTE[bits]
    if block_m is None:  # all of M (a legal block at any size: decode needs no padding), else even blocks
        block_m = m if m <= MAX_BLOCK_M else common.round_up(-(-m // -(-m // MAX_BLOCK_M)), sub)
    elif block_m % sub and block_m != m:
        raise ValueError(f"qmatmul (tpu): block_m must be a multiple of {sub} for {jnp.dtype(x_dtype).name} x, "
                         f"got {block_m}")
    if block_n is None:
        block_n = next((b for b in BLOCK_N if n % b == 0), n)
    elif n % block_n or (block_n % LANES and block_n != n):
        raise ValueError(f"qmatmul (tpu): block_n must divide N = {n} and be a multiple of {LANES} (or N), "
                         f"got {block_n}")
    legal = _legal_k(k, g, per_byte)
    if block_k is None:
        fitting = [b for b in legal if b * block_n <= MAX_TILE]
        block_k = fitting[-1] if fitting else legal[0]
    elif block_k not in legal:
        raise ValueError(f"qmatmul (tpu): block_k {block_k} does not fit K = {k}, group size {g} at {bits} bits; "
                         f"choose one of {legal}")
    return block_m, block_n, block_k


def _kernel(*refs, bits: int, n_x: int, asymmetric: bool, precision):
    x_refs, (c_ref, s_ref), rest = refs[:n_x], refs[n_x:n_x + 2], refs[n_x + 2:]
    z_ref, (o_ref, acc_ref) = (rest[0], rest[1:]) if asymmetric else (None, rest)
    kb = pl.program_id(2)

    @pl.when(kb == 0)
    def _():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    x_dtype = x_refs[0].dtype
    weights = common.dequantize_block(c_ref[...], s_ref[...], None if z_ref is None else z_ref[...], bits, x_dtype)
    for x_ref, w in zip(x_refs, weights):  # 4 bits: x_even @ W_lo + x_odd @ W_hi
        acc_ref[...] += jnp.dot(x_ref[...], w, preferred_element_type=jnp.float32, precision=precision)

    @pl.when(kb == pl.num_programs(2) - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def _group_params(a, k: int, g: int, block_k: int, block_n: int):
    """Scale or zero (K / g, N) -> (the array to pass, its BlockSpec) for K blocks of block_k rows.

    As it is when the K block's group rows form a legal tile (all of K, or a multiple of the dtype's
    sublane tile): a reshape would change the tiled HBM layout, i.e. cost a copy. Otherwise 3-D,
    (K / block_k, block_k / g, N) or (K / g, 1, N), whose blocks cover the last two dims whole.
    """
    n, rows = a.shape[1], max(block_k // g, 1)
    # lax.div, not //: a plain integer division (floor division lowers through sign ops Mosaic can
    # only build knowing the chip, which a compile from a CPU host does not tell it)
    group = (lambda kb: kb) if block_k >= g else (lambda kb: jax.lax.div(kb, g // block_k))  # noqa: E731
    if rows == a.shape[0] or (block_k >= g and rows % _sublanes(a.dtype) == 0):
        return a, pl.BlockSpec((rows, block_n), lambda i, j, kb: (group(kb), j))
    a3 = a.reshape(a.shape[0] // rows, rows, n)
    return a3, pl.BlockSpec((None, rows, block_n), lambda i, j, kb: (group(kb), 0, j))


def _bytes_accessed(grid, weights, xs, out_bytes: int) -> int:
    """HBM traffic of the pipeline, which fetches a block only when its index changes between
    consecutive steps (K fastest): the weights once per M block (once in all when the weight
    blocks never change), x once per N block (once when K is one block)."""
    n_m, n_n, n_k = grid
    weight_reads = 1 if n_m == 1 or n_n * n_k == 1 else n_m
    x_reads = 1 if n_k == 1 else n_n
    nbytes = lambda arrays: sum(a.size * a.dtype.itemsize for a in arrays)  # noqa: E731
    return weight_reads * nbytes(weights) + x_reads * nbytes(xs) + out_bytes


def qmatmul(x, codes, scale, zero, *, bits: int, out_dtype=None, block_m=None, block_n=None, block_k=None,
            interpret=False):
    """x (M, K) float32 / bfloat16, codes (K / per_byte, N) uint8, scale / zero (K / g, N) -> (M, N) in
    out_dtype (default x.dtype), float32 accumulation."""
    m, k, n, per_byte, g = common.matrix_dims(x, codes, scale, zero, bits, "tpu")
    bm, bn, bk = blocks(m, k, n, g, bits, x.dtype, block_m, block_n, block_k)
    mp = common.round_up(m, bm)
    xs = common.padded_split(x, mp, bits)
    # float16 scales travel as their bits (a free bitcast): Mosaic on v5e has no float16 loads.
    s = jax.lax.bitcast_convert_type(scale, jnp.uint16) if scale.dtype == jnp.float16 else scale
    params, param_specs = zip(*[_group_params(a, k, g, bk, bn) for a in ([s] if zero is None else [s, zero])])
    out_dtype = jnp.dtype(out_dtype or x.dtype)

    bkp = bk // per_byte
    x_spec = pl.BlockSpec((bm, bkp), lambda i, j, kb: (i, kb))
    c_spec = pl.BlockSpec((bkp, bn), lambda i, j, kb: (kb, j))
    grid = (mp // bm, n // bn, k // bk)
    cost = pl.CostEstimate(flops=2 * mp * n * k, transcendentals=0,
                           bytes_accessed=_bytes_accessed(grid, [codes, *params], xs, mp * n * out_dtype.itemsize))
    y = pl.pallas_call(
        functools.partial(_kernel, bits=bits, n_x=len(xs), asymmetric=zero is not None,
                          precision=common.dot_precision(x.dtype)),
        grid=grid,
        in_specs=[x_spec] * len(xs) + [c_spec, *param_specs],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, kb: (i, j)),
        out_shape=jax.ShapeDtypeStruct((mp, n), out_dtype),
        scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=cost, interpret=interpret, name=f"qmatmul_int{bits}",
    )(*xs, codes, *params)
    return y[:m] if mp > m else y
