"""Weight-only quantized matmul: the weight format, input checks and the per-block dequantize
shared by the GPU and TPU kernels.

Format (jaxlm.quant.formats): W is a (K, N) matrix, K contracted rows, N output columns.
  codes (K / per_byte, N) uint8, packed along K: per_byte = 1 at 8 bits, 2 at 4 bits; row k sits
        in byte row k // per_byte at bit offset bits * (k % per_byte) (4 bits: byte row r holds
        row 2r in its low nibble, row 2r + 1 in its high nibble).
  scale (K / g, N) float (float32 at 8 bits, float16 at 4 bits), g = group size along K (g = K:
        one scale per output column).
  zero  (K / g, N) uint8 or None. W = (code - zero) * scale; symmetric (zero None):
        W = (code - 2^(bits-1)) * scale.
The kernels never write the float W: each K block is dequantized in registers / VMEM from its
packed codes. At 4 bits the low and high nibbles are two weight matrices W_lo (rows 0, 2, 4, ...)
and W_hi (rows 1, 3, 5, ...), so y = x_even @ W_lo + x_odd @ W_hi with x's even and odd columns
split once outside the kernel (no interleave inside).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SUPPORTED_BITS = (8, 4)  # in the kernels; the reference also takes 3 and 2
PER_BYTE = {8: 1, 4: 2, 3: 1, 2: 4}  # codes per uint8, as jaxlm.quant.formats stores them
X_DTYPES = (jnp.float32, jnp.bfloat16)
SCALE_DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)
MIN_GROUP = 32  # groups smaller than this (other than g = K) are rejected: no format makes them


def check_inputs(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, bits: int) -> None:
    """x (..., K), codes (K / per_byte, N) uint8, scale (K / g, N), zero None or (K / g, N) uint8.

    Raises ValueError("qmatmul: ...") naming the fix when they do not fit together.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"qmatmul: {bits}-bit codes have no kernel; use bits 8 or 4 (for 3- or 2-bit weights "
                         f"call qmatmul_reference, the XLA dequantize-and-matmul)")
    if x.ndim < 1 or x.dtype not in X_DTYPES:
        raise ValueError(f"qmatmul: x {x.shape} {x.dtype} must be (..., K) float32 or bfloat16; cast it first")
    if codes.ndim != 2 or codes.dtype != jnp.uint8:
        raise ValueError(f"qmatmul: codes {codes.shape} {codes.dtype} must be a (K / per_byte, N) uint8 matrix "
                         f"(flatten leading layer axes before the call)")
    k, per_byte = x.shape[-1], PER_BYTE[bits]
    if codes.shape[0] * per_byte != k:
        raise ValueError(f"qmatmul: codes {codes.shape} hold {codes.shape[0] * per_byte} rows of K at {bits} bits "
                         f"({per_byte} per byte) but x has K = {k}; pass the codes of a ({k}, N) weight")
    n = codes.shape[1]
    if scale.ndim != 2 or scale.shape[1] != n or scale.dtype not in SCALE_DTYPES:
        raise ValueError(f"qmatmul: scale {scale.shape} {scale.dtype} must be (K / group_size, {n}) float32, "
                         f"float16 or bfloat16, one row per group of K rows")
    if scale.shape[0] == 0 or k % scale.shape[0]:
        raise ValueError(f"qmatmul: {scale.shape[0]} scale rows do not divide K = {k}; scale must be "
                         f"(K / group_size, N) with group_size dividing K")
    g = k // scale.shape[0]
    if g != k and g % MIN_GROUP:
        raise ValueError(f"qmatmul: group size {g} (K = {k} over {scale.shape[0]} scale rows) is not supported; "
                         f"use a multiple of {MIN_GROUP} or one group over all of K (per-channel scales)")
    if zero is not None and (zero.shape != scale.shape or zero.dtype != jnp.uint8):
        raise ValueError(f"qmatmul: zero {zero.shape} {zero.dtype} must be uint8 with the scale's shape "
                         f"{scale.shape} (or None for symmetric codes)")


def matrix_dims(x, codes, scale, zero, bits: int, platform: str) -> tuple[int, int, int, int, int]:
    """Checked (M, K, N, codes per byte, group size) of a 2-D call of one platform's kernel."""
    check_inputs(x, codes, scale, zero, bits)
    if x.ndim != 2:
        raise ValueError(f"qmatmul ({platform}): x must be (M, K) here, got {x.shape}; the package entry point "
                         f"reshapes")
    m, k = x.shape
    return m, k, codes.shape[1], PER_BYTE[bits], group_size(k, scale)


def padded_split(x: jax.Array, rows: int, bits: int) -> list[jax.Array]:
    """x (M, K) padded to `rows` rows, then split as `split_even_odd`."""
    m = x.shape[0]
    return split_even_odd(jnp.pad(x, ((0, rows - m), (0, 0))) if rows > m else x, bits)


def group_size(k: int, scale) -> int:
    return k // scale.shape[0]


def split_even_odd(x: jax.Array, bits: int) -> list[jax.Array]:
    """x (M, K) -> [x] at 8 bits, [x[:, 0::2], x[:, 1::2]] (each (M, K / 2)) at 4 bits: the x columns
    that meet the low and the high nibbles."""
    return [x] if bits == 8 else [x[:, 0::2], x[:, 1::2]]


def dequantize_block(codes: jax.Array, scale: jax.Array, zero: jax.Array | None, bits: int,
                     dtype) -> list[jax.Array]:
    """One K block inside a kernel: packed codes (rows, bn) uint8 -> [W] (8 bits) or [W_lo, W_hi]
    (4 bits), each (rows, bn) in dtype.

    scale (float, or uint16 holding float16 bits), zero (uint8): (1, bn) for a block inside one group,
    else (groups, bn) with the block's rows split evenly over its groups. zero None: symmetric, offset
    2^(bits-1). The arithmetic is float32, rounded once to dtype at the end, as the reference does.
    """
    c = codes.astype(jnp.int32)
    parts = [c] if bits == 8 else [c & 0xF, c >> 4]  # low nibble: even rows of K; high: odd rows
    rows, bn = codes.shape
    groups = scale.shape[0]
    scale = f16_bits_to_f32(scale) if scale.dtype == jnp.uint16 else scale.astype(jnp.float32)
    zero = None if zero is None else zero.astype(jnp.int32).astype(jnp.float32)
    out = []
    for p in parts:
        w = p.astype(jnp.float32)
        if groups > 1:  # (rows, bn) -> (groups, rows / groups, bn): one scale row per group
            w = w.reshape(groups, rows // groups, bn)
            s, z = scale[:, None, :], None if zero is None else zero[:, None, :]
        else:
            s, z = scale, zero
        w = (w - (2.0 ** (bits - 1) if z is None else z)) * s
        out.append(w.reshape(rows, bn).astype(dtype))
    return out


def f16_bits_to_f32(h: jax.Array) -> jax.Array:
    """float16 bit patterns (uint16) -> float32 values, with 32-bit integer ops only (Mosaic on v5e
    cannot load float16). Subnormals are exact (small scales land there); inf and NaN are kept."""
    h = h.astype(jnp.int32)
    sign, exp, mant = (h & 0x8000) << 16, (h >> 10) & 0x1F, h & 0x3FF
    exp32 = jnp.where(exp == 0x1F, 0xFF, exp + (127 - 15))
    normal = jax.lax.bitcast_convert_type(sign | (exp32 << 23) | (mant << 13), jnp.float32)
    subnormal = mant.astype(jnp.float32) * 2.0 ** -24  # mant / 2^10 * 2^-14, exact in float32
    return jnp.where(exp == 0, jnp.where(sign != 0, -subnormal, subnormal), normal)


def dot_precision(dtype):
    """float32 x: ask for a full float32 matmul (Triton's default for float32 is TF32)."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m
