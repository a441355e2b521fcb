"""Quantized matmul in plain XLA that never holds the whole float weight: the K rows are
dequantized a chunk at a time inside a `fori_loop`, and each chunk's dot accumulates in float32.

Why (XLA:CPU, jax 0.10.2, docs/inference.md): XLA:CPU does not fuse a dequantize into a dot, so
`qmatmul_reference` writes the (K, N) float weight before multiplying. Inside a decode loop the
compiler then hoists that dequantize out of the loop as loop-invariant, so generation holds a float
copy of every quantized weight: an int4 model needs float32 memory to decode. Here the dequantize
depends on the chunk index and (through an optimization barrier) on x, so it stays in the loop, and
the temporaries are one chunk (about `CHUNK_BYTES` of float32, which stays in cache).

Per-channel scales (one group over all of K) are folded out of the loop:
  x @ ((c - z) * s) = (x @ c - z * sum(x)) * s, so a chunk is only a convert of its codes.
At 4 bits the low and high nibbles are the even and odd rows of W (common.py), so x's even and
odd columns multiply them directly: no interleave.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.qmatmul.common import PER_BYTE, SUPPORTED_BITS

CHUNK_BYTES = 8 << 20  # float32 bytes of one dequantized chunk: in this CPU's 32 MB L3, few loop steps
# (whole-model decode, 270M-class: 4, 8 and 16 MB within noise of each other, 32 MB 0.75x of f32)


def _dot(x, w):
    return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)


def _largest_divisor(n: int, at_most: int, multiple_of: int = 1) -> int:
    """The largest d <= at_most dividing n with d % multiple_of == 0 (n itself if none is smaller)."""
    for d in range(min(at_most, n), 0, -1):
        if n % d == 0 and d % multiple_of == 0:
            return d
    return n


def chunk_rows(k: int, n: int, group: int, bits: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows of K dequantized per loop step: whole groups (or, per channel, whole packed bytes),
    dividing K, about chunk_bytes of float32."""
    target = max(1, chunk_bytes // (4 * n))
    if group == k:  # per channel: any row count that keeps the nibble pairs together
        return _largest_divisor(k, max(target, 8 * PER_BYTE[bits]), 8 * PER_BYTE[bits])
    return group * _largest_divisor(k // group, max(1, target // group))


def qmatmul_streamed(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
                     out_dtype=None, chunk_bytes: int | None = None) -> jax.Array:
    """x (..., K) @ W (K, N) -> (..., N) in out_dtype (default x.dtype), float32 accumulation.
    Same format and result as qmatmul_reference (up to summation order); 8 and 4 bits."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"qmatmul: {bits}-bit codes have no streamed path; use bits 8 or 4 "
                         f"(qmatmul_reference takes 3 and 2)")
    out_dtype = out_dtype or x.dtype
    lead, k = x.shape[:-1], x.shape[-1]
    per_byte, n = PER_BYTE[bits], codes.shape[1]
    group = k // scale.shape[0]
    x = x.reshape(-1, k).astype(jnp.float32)
    # Tie the codes to x, so that no dequantize of them is loop-invariant (a one-chunk weight has no
    # loop of its own, and XLA would hoist its dequantize out of the decode loop).
    x, codes = lax.optimization_barrier((x, codes))
    # Columns of x that meet each stored row of codes: all of them at 8 bits, even / odd at 4.
    xs = [x] if per_byte == 1 else [x[:, 0::2], x[:, 1::2]]
    scale = scale.astype(jnp.float32)
    offset = jnp.float32(2.0 ** (bits - 1)) if zero is None else zero.astype(jnp.float32)
    per_channel = group == k
    rows = chunk_rows(k, n, group, bits, chunk_bytes or CHUNK_BYTES)
    byte_rows = rows // per_byte

    def parts(c):  # a chunk of packed codes -> its float32 code matrices, matching xs
        if per_byte == 1:
            return [c.astype(jnp.float32)]
        mask = jnp.uint8(2 ** bits - 1)
        return [(c & mask).astype(jnp.float32), (c >> bits).astype(jnp.float32)]

    def chunk(i, acc):
        c = lax.dynamic_slice_in_dim(codes, i * byte_rows, byte_rows, 0)
        xi = [lax.dynamic_slice_in_dim(xp, i * byte_rows, byte_rows, 1) for xp in xs]
        if per_channel:
            ws = parts(c)
        else:  # dequantize the chunk's whole groups: each group row repeated over its byte rows
            g0, ng = i * (rows // group), rows // group
            s = jnp.repeat(lax.dynamic_slice_in_dim(scale, g0, ng, 0), group // per_byte, axis=0)
            z = offset if zero is None else jnp.repeat(lax.dynamic_slice_in_dim(offset, g0, ng, 0),
                                                       group // per_byte, axis=0)
            ws = [(w - z) * s for w in parts(c)]
        for xp, w in zip(xi, ws):
            acc = acc + _dot(xp, w)
        return acc

    acc = jnp.zeros((x.shape[0], n), jnp.float32)
    steps = k // rows
    # The backward recomputes each chunk's dequantize instead of saving it (that would be the float W).
    acc = chunk(0, acc) if steps == 1 else lax.fori_loop(0, steps, jax.checkpoint(chunk), acc)
    if per_channel:
        acc = (acc - jnp.sum(x, axis=1, keepdims=True) * offset) * scale
    return acc.astype(out_dtype).reshape(lead + (n,))
