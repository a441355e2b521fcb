"""Weight-only quantized matmuls: x (..., K) @ W (K, N) with W stored as packed integer codes.

impl "auto" picks per target platform (`AUTO` in dispatch): the Pallas kernel on GPU and TPU
(kernels_pallas.qmatmul), which reads the packed codes and dequantizes them block by block in
SRAM / VMEM, so the float weight never exists in HBM; XLA on a CPU, where Pallas only interprets.
3- and 2-bit codes (the study's widths) have no kernel and always take the one-dot XLA reference.

impl "xla" on a CPU is `qmatmul_streamed`: it dequantizes K a chunk at a time inside a loop.
XLA:CPU does not fuse a dequantize into a dot, and inside the decode loop it hoists a whole-weight
dequantize out of the loop as loop-invariant, so the one-dot form would hold a float32 copy of
every quantized weight during generation (docs/inference.md). On GPU and TPU "xla" is the one-dot
reference, whose dequantize those compilers fuse into the matmul's operand.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import kernels_pallas.qmatmul as pallas_qmatmul
from jaxlm.ops import choices
from jaxlm.ops.dispatch import as_jaxlm_error, pallas_target, resolve_impl, target_platform
from jaxlm.ops.policy import policy
from jaxlm.ops.sharded import per_shard


def quantized_matmul(x: jax.Array, codes: jax.Array, scale: jax.Array, zero: jax.Array | None, *, bits: int,
                     dtype, impl: str = "auto") -> jax.Array:
    """x (..., K) in `dtype` @ W (K, N) -> (..., N) in `dtype`, float32 accumulation.

    codes (K / per_byte, N) uint8, scale (K / g, N), zero (K / g, N) uint8 or None: the
    jaxlm.quant.formats layout of one (unstacked) weight.
    """
    impl = resolve_impl(impl, "qmatmul")
    x = x.astype(dtype)
    if bits not in pallas_qmatmul.SUPPORTED_BITS:
        choices.note("qmatmul", "xla", f"no {bits}-bit kernel" if impl == "pallas" else "")
        return pallas_qmatmul.qmatmul_reference(x, codes, scale, zero, bits=bits, out_dtype=dtype)
    if impl != "pallas":
        choices.note("qmatmul", "xla")
        if policy(target_platform()).xla_qmatmul == "streamed":
            return pallas_qmatmul.qmatmul_streamed(x, codes, scale, zero, bits=bits, out_dtype=dtype)
        return pallas_qmatmul.qmatmul_reference(x, codes, scale, zero, bits=bits, out_dtype=dtype)
    platform, interpret = pallas_target()
    choices.note("qmatmul", choices.pallas_name(platform, interpret))
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

