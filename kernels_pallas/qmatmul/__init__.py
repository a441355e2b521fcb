"""Weight-only quantized matmul (int8 and int4 codes, symmetric or with zero points, per-channel or
grouped scales): GPU (Triton) and TPU (Mosaic) kernels that read the packed codes, never a float
copy of the weight.

`qmatmul(x, codes, scale, zero, bits=..., platform="gpu" | "tpu", out_dtype=..., block_m=...,
block_n=..., block_k=..., interpret=...)` takes the jaxlm.quant.formats layout (see common.py);
`qmatmul_reference` is the XLA dequantize-and-matmul (the test oracle, and the path for 3- and
2-bit codes, which have no kernel); `qmatmul_streamed` is the XLA form that dequantizes K a chunk at
a time (for XLA:CPU, which would otherwise write the whole float weight).
"""

from kernels_pallas.qmatmul import gpu, tpu
from kernels_pallas.qmatmul.common import SUPPORTED_BITS, check_inputs
from kernels_pallas.qmatmul.reference import dequantize_reference, qmatmul_reference
from kernels_pallas.qmatmul.streamed import qmatmul_streamed

_VARIANTS = {"gpu": gpu, "tpu": tpu}


def qmatmul(x, codes, scale, zero=None, *, bits: int, platform: str = "gpu", **options):
    """x (..., K) float32 / bfloat16 @ W (K, N) -> (..., N), float32 accumulation, in out_dtype
    (default x.dtype). codes (K / per_byte, N) uint8, scale (K / g, N), zero (K / g, N) uint8 or None.
    options: out_dtype, block_m, block_n, block_k, interpret (True, or pltpu.InterpretParams() for
    the TPU interpreter)."""
    if platform not in _VARIANTS:
        raise ValueError(f"qmatmul: unknown Pallas platform {platform!r}; choose 'gpu' or 'tpu'")
    check_inputs(x, codes, scale, zero, bits)
    lead = x.shape[:-1]
    y = _VARIANTS[platform].qmatmul(x.reshape(-1, x.shape[-1]), codes, scale, zero, bits=bits, **options)
    return y.reshape(lead + (codes.shape[1],))


__all__ = ["SUPPORTED_BITS", "check_inputs", "dequantize_reference", "qmatmul", "qmatmul_reference", "qmatmul_streamed"]
