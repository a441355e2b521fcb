"""GGUF tensor data: float weights through gguf's own quantizers, and jaxlm's quantized weights
written from their stored codes where the formats meet (and read back into them).

GGUF blocks hold 32 consecutive weights of a row, i.e. along the input dim, which is also the axis
jaxlm groups scales over (jaxlm.quant.formats):
  Q4_0  fp16 d, 32 nibbles (element j: low nibble of byte j, j + 16: high)   w = (q - 8) d
  Q4_1  fp16 d, fp16 m, 32 nibbles                                            w = q d + m
  Q8_0  fp16 d, 32 int8                                                       w = q d
jaxlm stores unsigned codes c, a scale s per group of input rows (float16 below 8 bits, float32 at
8 bits) and, asymmetric, a uint8 zero point z, with w = (c - offset) s. At group 32:
  int4 symmetric  -> Q4_0: q = c, d = s                 exact (the same numbers)
  int4 asymmetric -> Q4_1: q = c, d = s, m = fp16(-z s)  codes and d exact; m rounded to float16
  int8 symmetric  -> Q8_0: q = c - 128, d = fp16(s)      codes exact; the float32 scale rounded
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from jaxlm.errors import JaxlmError

Q = gguf.GGMLQuantizationType
QTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
# (bits, symmetric) of a jaxlm scheme at group 32 -> the GGUF type its codes go into unchanged
CODE_TYPES = {(4, True): "q4_0", (4, False): "q4_1", (8, True): "q8_0"}
BLOCK = 32


@dataclasses.dataclass
class Codes:
    """A quantized weight in HF row layout: codes (out, in) unsigned, scale and zero (out, in / 32)."""

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    bits: int


# The output head at a 4-bit type: llama.cpp's quantizer keeps it at higher precision (Q6_K), since its
# error reaches every logit; gguf's Python quantizer writes no K-quants, so q8_0 here.
HEAD_TYPES = {"q4_0": "q8_0", "q4_1": "q8_0"}


def head_name(tied: bool) -> str:
    """The GGUF tensor that produces the logits: the output matrix, or the embedding table when tied."""
    return "token_embd.weight" if tied else "output.weight"


def tensor_type(name: str, shape: tuple[int, ...], type_name: str, head: str | None = None):
    """The GGML type a tensor is written in: 1-D tensors (norms, RoPE factors) stay float32, as the
    converter keeps them; the output head (`head`) takes HEAD_TYPES; a row length the block size does not
    divide is an error naming the tensor."""
    if len(shape) < 2:
        return Q.F32
    if name == head:
        type_name = HEAD_TYPES.get(type_name, type_name)
    qtype = QTYPES[type_name]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        raise JaxlmError(f"{name}: rows of {shape[-1]} weights do not split into {type_name}'s blocks of {block}; "
                         f"choose --type f16, bf16 or f32")
    return qtype


def nbytes(shape: tuple[int, ...], qtype) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * shape[-1] // block * size


def encode(x: np.ndarray, qtype) -> np.ndarray:
    """Float weights -> the tensor data the writer takes (uint8 blocks for quantized types)."""
    if qtype in (Q.F32, Q.F16):
        return gguf.quants.quantize(np.ascontiguousarray(x), qtype)
    return gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), qtype)


def decode(data: np.ndarray, qtype, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor data of any type gguf can dequantize -> float32 of the numpy `shape`."""
    if qtype == Q.BF16:  # bit-exact: a bfloat16 is the top half of a float32
        return (np.asarray(data).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    try:
        return gguf.quants.dequantize(np.asarray(data), qtype).reshape(shape)
    except NotImplementedError:
        raise JaxlmError(f"GGUF quant type {qtype.name} cannot be dequantized by the gguf library; requantize the "
                         f"file with llama.cpp's llama-quantize to q8_0, q4_0 or f16") from None


def blocks_from_codes(q: Codes, type_name: str) -> np.ndarray:
    """(out, in) codes -> (out, in / 32 * block bytes) uint8 GGUF blocks, the codes unchanged."""
    out, k = q.codes.shape
    c = q.codes.reshape(out, k // BLOCK, BLOCK)
    d = q.scale.astype(np.float16)[..., None]
    if type_name == "q8_0":
        body = (c.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        parts = [d.view(np.uint8), body]
    else:
        nibbles = c[..., :BLOCK // 2] | (c[..., BLOCK // 2:] << np.uint8(4))
        parts = [d.view(np.uint8), nibbles]
        if type_name == "q4_1":
            m = (-(q.zero.astype(np.float32)) * q.scale.astype(np.float32)).astype(np.float16)[..., None]
            parts.insert(1, m.view(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(out, -1)


def codes_from_blocks(data: np.ndarray, qtype, shape: tuple[int, int]) -> Codes:
    """Inverse of `blocks_from_codes`: Q8_0 -> int8 symmetric (float32 scales, exact), Q4_0 -> int4
    symmetric, Q4_1 -> int4 asymmetric with z = round(-m / d) (exact for files written from jaxlm codes;
    `offset_error` says how far another file's minimum is from that)."""
    out, k = shape
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = np.asarray(data, np.uint8).reshape(out, k // BLOCK, size)
    d = b[..., :2].copy().view(np.float16)[..., 0]
    if qtype == Q.Q8_0:
        codes = (b[..., 2:].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return Codes(codes.reshape(out, k), d.astype(np.float32), None, 8)
    start = 4 if qtype == Q.Q4_1 else 2
    body = b[..., start:]
    codes = np.concatenate([body & np.uint8(15), body >> np.uint8(4)], axis=-1).reshape(out, k)
    zero = None
    if qtype == Q.Q4_1:
        m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = np.clip(np.round(-m / np.where(d == 0, 1, d).astype(np.float32)), 0, 15).astype(np.uint8)
    return Codes(codes, d, zero, 4)


def offset_error(data: np.ndarray, q: Codes) -> float:
    """Largest |m + z d| / d of a Q4_1 tensor read as `q`: 0 up to float16 rounding when jaxlm wrote it."""
    size = gguf.GGML_QUANT_SIZES[Q.Q4_1][1]
    b = np.asarray(data, np.uint8).reshape(q.codes.shape[0], -1, size)
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    d = q.scale.astype(np.float32)
    return float(np.max(np.abs(m + q.zero * d) / np.where(d == 0, 1, d)))
