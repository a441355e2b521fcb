"""The model's compute primitives, behind one dispatch point.

The model calls `rms_norm`, `attention` and `dense` from here and never a kernel directly;
`jaxlm.ops.dispatch` decides which implementation runs for the current backend.
"""

from jaxlm.ops.dense import dense
from jaxlm.ops.dispatch import attention, resolve_impl, rms_norm, rms_norm_residual

__all__ = ["attention", "dense", "resolve_impl", "rms_norm", "rms_norm_residual"]
