"""Weight-only quantized matmuls: x (..., K) @ W (K, N) with W stored as packed integer codes.

impl "auto" picks per target platform (`AUTO` in dispatch): the Pallas kernel on GPU and TPU
(kernels_pallas.qmatmul), which reads the packed codes and dequantizes them block by block in
SRAM / VMEM, so the float weight never exists in HBM; XLA on a CPU, where Pallas only interprets.
3- and 2-bit codes (the study's widths) have no kernel and always take the XLA path.

The XLA path dequantizes the weight and runs one dot. On XLA:CPU the dequantized (K, N) float
weight is materialised (XLA:CPU does not fuse elementwise producers into a dot), which is why
quantized CPU decode does not get faster with fewer bytes (docs/inference.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import kernels_pallas.qmatmul as pallas_qmatmul
from jaxlm.ops.dispatch import as_jaxlm_error, pallas_target, resolve_impl
from jaxlm.ops.sharded import per_shard


def quantized_matmul(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
                     dtype, impl: str = "auto") -> jax.Array:
    """x (..., K) in `dtype` @ W (K, N) -> (..., N) in `dtype`, float32 accumulation.

    codes (K / per_byte, N) uint8, scale (K / g, N), zero (K / g, N) uint8 or None: the
    jaxlm.quant.formats layout of one (unstacked) weight.
    """
    impl = resolve_impl(impl, "qmatmul")
    x = x.astype(dtype)
    if impl != "pallas" or bits not in pallas_qmatmul.SUPPORTED_BITS:
        return pallas_qmatmul.qmatmul_reference(x, codes, scale, zero, bits=bits, out_dtype=dtype)
    platform, interpret = pallas_target()
    kernel = functools.partial(pallas_qmatmul.qmatmul, bits=bits, platform=platform, interpret=interpret,
                               out_dtype=jnp.dtype(dtype))
    x_axes = ("batch",) + (None,) * (x.ndim - 1)
    w_axes = (None, None)
    with as_jaxlm_error():
        pallas_qmatmul.check_inputs(x, codes, scale, zero, bits)
        if zero is None:
            return per_shard(lambda x, c, s: kernel(x, c, s, None), (x, codes, scale), (x_axes, w_axes, w_axes),
                             x_axes)
        return per_shard(kernel, (x, codes, scale, zero), (x_axes, w_axes, w_axes, w_axes), x_axes)

