from kernels_pallas.rmsnorm.reference import rms_norm_reference, rms_norm_residual_reference

__all__ = ["rms_norm_reference", "rms_norm_residual_reference"]
