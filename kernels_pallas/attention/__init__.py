from kernels_pallas.attention.reference import attention_reference

__all__ = ["attention_reference"]
