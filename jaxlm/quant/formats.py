"""Weight-only quantization formats: the numbers, with no model or NNX in sight.

A weight is viewed as a matrix W (K, N): K = its input (contracted) dims flattened, N = its
output dims flattened, with any leading (layer) axes kept in front. Scales are per output
column and per group of `group_size` consecutive input rows (group_size None: one group over
all of K, i.e. per output channel).

  symmetric   q in [-(2^(b-1) - 1), 2^(b-1) - 1],  s = absmax / (2^(b-1) - 1),  W ~ q * s
  asymmetric  q in [0, 2^b - 1], s = (max - min) / (2^b - 1), z = round(-min / s),  W ~ (q - z) * s

Codes are stored unsigned (symmetric codes offset by 2^(b-1)) in uint8, packed along K:
two per byte at 4 bits, four per byte at 2 bits, one per byte at 8 and 3 bits (3-bit is for the
study only, so it is not bit-packed). Scales are float32 at 8 bits (one per output channel, so they
cost little, and an int8 step of small weights would fall into float16's subnormal range) and float16
below 8 bits (one per group: float32 would cost 16/g more bits); asymmetric zero points are uint8.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxlm.errors import JaxlmError

SUPPORTED_BITS = (8, 4, 3, 2)
SUPPORTED_GROUPS = (None, 32, 64, 128, 256)
SCALE_DTYPE = jnp.float16  # scales of the 4/3/2-bit schemes


def scale_dtype(bits: int):
    return jnp.float32 if bits == 8 else SCALE_DTYPE
PER_BYTE = {8: 1, 4: 2, 3: 1, 2: 4}  # codes stored per uint8


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How one weight is quantized. group_size None = one scale per output channel."""

    bits: int
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            raise JaxlmError(f"unsupported bit width {self.bits}; "
                             f"choose one of {SUPPORTED_BITS} (16 = no quantization)")
        if self.group_size not in SUPPORTED_GROUPS:
            raise JaxlmError(f"unsupported group size {self.group_size}; choose one of 32, 64, 128, 256 "
                             f"(or none for per-output-channel scales)")

    @property
    def qmax(self) -> int:
        """Largest unsigned code."""
        return 2 ** self.bits - 1

    def group_for(self, k: int, what: str = "weight") -> int:
        """The group size used for an input dim of size k: group_size when it divides k, otherwise the
        largest supported size below it that does (e.g. 64 for k = 192 at group 128), otherwise k
        (per channel). The scale shapes record it, so a saved model needs nothing else."""
        if k % PER_BYTE[self.bits]:
            raise JaxlmError(f"input dim {k} of {what} is not a multiple of {PER_BYTE[self.bits]} "
                             f"({self.bits}-bit codes are packed {PER_BYTE[self.bits]} per byte)")
        g = self.group_size or k
        if k % g:
            g = next((s for s in sorted((s for s in SUPPORTED_GROUPS if s), reverse=True) if s < g and k % s == 0), k)
        return g


def group_params(w, scheme: Scheme):
    """w (..., K, N) float -> (scale (..., K/g, N) in scale_dtype(bits), zero (..., K/g, N) uint8 or None)."""
    k = w.shape[-2]
    g = scheme.group_for(k)
    wg = w.astype(jnp.float32).reshape(w.shape[:-2] + (k // g, g, w.shape[-1]))
    if scheme.symmetric:
        half = 2 ** (scheme.bits - 1) - 1
        scale = jnp.max(jnp.abs(wg), axis=-2) / half
        return _safe(scale.astype(scale_dtype(scheme.bits))), None
    lo = jnp.minimum(jnp.min(wg, axis=-2), 0.0)  # include 0 so that zero is exactly representable
    hi = jnp.maximum(jnp.max(wg, axis=-2), 0.0)
    scale = _safe(((hi - lo) / scheme.qmax).astype(scale_dtype(scheme.bits)))
    zero = jnp.clip(jnp.round(-lo / scale.astype(jnp.float32)), 0, scheme.qmax).astype(jnp.uint8)
    return scale, zero


def _safe(scale):
    # A group that is all zero (or below float16 range) gets scale 1 so that codes are 0 rather than NaN.
    return jnp.where(scale > 0, scale, jnp.ones_like(scale))


def _expand(a, g: int):
    """(..., K/g, N) -> (..., K, N) by repeating each group row g times."""
    return jnp.repeat(a, g, axis=-2)


def encode(w, scale, zero, scheme: Scheme):
    """w (..., K, N) with its group params -> unsigned codes (..., K, N) uint8 (not packed)."""
    g = w.shape[-2] // scale.shape[-2]
    s = _expand(scale.astype(jnp.float32), g)
    if scheme.symmetric:
        half = 2 ** (scheme.bits - 1) - 1
        q = jnp.clip(jnp.round(w.astype(jnp.float32) / s), -half, half) + 2 ** (scheme.bits - 1)
    else:
        q = jnp.clip(jnp.round(w.astype(jnp.float32) / s) + _expand(zero.astype(jnp.float32), g), 0, scheme.qmax)
    return q.astype(jnp.uint8)


def decode(codes, scale, zero, scheme: Scheme, dtype=jnp.float32):
    """Unsigned codes (..., K, N) + group params -> weights (..., K, N) in dtype."""
    g = codes.shape[-2] // scale.shape[-2]
    offset = jnp.float32(2 ** (scheme.bits - 1)) if scheme.symmetric else _expand(zero.astype(jnp.float32), g)
    return ((codes.astype(jnp.float32) - offset) * _expand(scale.astype(jnp.float32), g)).astype(dtype)


def pack(codes, bits: int):
    """(..., K, N) uint8 codes < 2^bits -> (..., K / per_byte, N) uint8; row k sits in byte k // per_byte,
    at bit offset bits * (k % per_byte)."""
    n = PER_BYTE[bits]
    if n == 1:
        return codes
    c = codes.reshape(codes.shape[:-2] + (codes.shape[-2] // n, n, codes.shape[-1])).astype(jnp.uint8)
    out = c[..., 0, :]
    for i in range(1, n):
        out = out | (c[..., i, :] << (bits * i))
    return out


def unpack(packed, bits: int):
    """Inverse of `pack`: (..., K / per_byte, N) -> (..., K, N) uint8."""
    n = PER_BYTE[bits]
    if n == 1:
        return packed
    mask = jnp.uint8(2 ** bits - 1)
    parts = [(packed >> (bits * i)) & mask for i in range(n)]
    stacked = jnp.stack(parts, axis=-2)  # (..., K/n, n, N)
    return stacked.reshape(packed.shape[:-2] + (packed.shape[-2] * n, packed.shape[-1]))


def quantize(w, scheme: Scheme):
    """Round-to-nearest: w (..., K, N) -> (packed codes, scale, zero)."""
    scale, zero = group_params(w, scheme)
    return pack(encode(w, scale, zero, scheme), scheme.bits), scale, zero


def dequantize(packed, scale, zero, scheme: Scheme, dtype=jnp.float32):
    """(packed codes, scale, zero) -> w (..., K, N) in dtype."""
    return decode(unpack(packed, scheme.bits), scale, zero, scheme, dtype)


def error_bound(scale, scheme: Scheme):
    """Largest |w - dequantize(quantize(w))| per group for round-to-nearest, (..., K/g, N) float32.

    Half a quantization step, plus the effect of rounding the scale to its storage dtype (relative
    error <= 2^-11 for float16, absolute <= 2^-25 in its subnormal range; times at most qmax steps),
    which can push the extreme values of a group a little further.
    """
    s = scale.astype(jnp.float32)
    if scale.dtype == jnp.float32:
        return s * (0.5 + scheme.qmax * 2.0 ** -23) + 1e-7
    return s * (0.5 + scheme.qmax * 2.0 ** -10) + scheme.qmax * 2.0 ** -25 + 1e-7
