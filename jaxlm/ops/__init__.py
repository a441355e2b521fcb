"""The model's compute primitives, behind one dispatch point.

The model calls `rms_norm`, `attention` and `dense` from here and never a kernel directly;
`jaxlm.ops.dispatch` decides which implementation runs for the current backend.
"""

from jaxlm.ops.dense import dense, trailing_contraction
from jaxlm.ops.dispatch import attention, cached_attention, resolve_impl, rms_norm, rms_norm_residual, target_platform
from jaxlm.ops.quantized import quantized_matmul

__all__ = ["attention", "cached_attention", "dense", "quantized_matmul", "resolve_impl", "rms_norm",
           "rms_norm_residual", "target_platform", "trailing_contraction"]
