"""Fused RMSNorm (optionally with the residual add in front): GPU (Triton) and TPU (Mosaic) kernels.

`rms_norm(x, weight, eps, platform=..., interpret=..., block_rows=...)` and `rms_norm_residual`
pick the kernel for a platform ("gpu" | "tpu"); the XLA references live beside them.
"""

from kernels_pallas.rmsnorm import gpu, tpu
from kernels_pallas.rmsnorm.common import check_inputs
from kernels_pallas.rmsnorm.reference import rms_norm_reference, rms_norm_residual_reference

_VARIANTS = {"gpu": gpu, "tpu": tpu}


def _variant(platform: str):
    if platform not in _VARIANTS:
        raise ValueError(f"rms_norm: unknown Pallas platform {platform!r}; choose 'gpu' or 'tpu'")
    return _VARIANTS[platform]


def rms_norm(x, weight, eps: float = 1e-6, *, platform: str = "gpu", **options):
    """x (..., D), weight (D,) -> (..., D). options: block_rows, interpret (see common.NormOptions)."""
    return _variant(platform).rms_norm(x, weight, eps, **options)


def rms_norm_residual(x, residual, weight, eps: float = 1e-6, *, platform: str = "gpu", **options):
    """h = x + residual -> (h, rms_norm(h)) in one kernel."""
    return _variant(platform).rms_norm_residual(x, residual, weight, eps, **options)


__all__ = ["check_inputs", "rms_norm", "rms_norm_residual", "rms_norm_reference", "rms_norm_residual_reference"]
