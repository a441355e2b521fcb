"""Quantized matmul in plain XLA: unpack, dequantize, matmul. The numerical reference for the
Pallas kernels (see common.py for the weight format)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels_pallas.qmatmul.common import PER_BYTE


def unpack_codes(codes: jax.Array, bits: int) -> jax.Array:
    """(K / per_byte, N) uint8 -> (K, N) uint8: row k from byte row k // per_byte, bits * (k % per_byte) up."""
    per_byte = PER_BYTE[bits]
    if per_byte == 1:
        return codes
    mask = jnp.uint8(2 ** bits - 1)
    parts = jnp.stack([(codes >> (bits * i)) & mask for i in range(per_byte)], axis=1)  # (K / pb, pb, N)
    return parts.reshape(codes.shape[0] * per_byte, codes.shape[1])


def dequantize_reference(codes, scale, zero, *, bits: int, dtype=jnp.float32) -> jax.Array:
    """-> W (K, N) in dtype: (code - zero) * scale in float32 (zero None: 2^(bits-1)), then cast."""
    c = unpack_codes(codes, bits).astype(jnp.float32)
    g = c.shape[0] // scale.shape[0]
    offset = 2.0 ** (bits - 1) if zero is None else jnp.repeat(zero.astype(jnp.float32), g, axis=0)
    return ((c - offset) * jnp.repeat(scale.astype(jnp.float32), g, axis=0)).astype(dtype)


def qmatmul_reference(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
                      out_dtype=None) -> jax.Array:
    """x (..., K) @ W (K, N) -> (..., N) in out_dtype (default x.dtype). W is dequantized in float32,
    cast to x.dtype, and multiplied with float32 accumulation. Takes 8, 4, 3 and 2 bits."""
    w = dequantize_reference(codes, scale, zero, bits=bits, dtype=x.dtype)
    y = jnp.dot(x, w, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    return y.astype(out_dtype or x.dtype)
