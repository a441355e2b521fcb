"""Flash attention (forward + backward, causal, GQA, packed segments): GPU (Triton) and TPU (Mosaic).

`flash_attention(q, k, v, causal=..., segment_ids=..., platform="gpu" | "tpu", block_q=...,
block_k=..., interpret=...)`; `attention_reference` is the dense XLA reference (the test oracle)
and `blockwise_attention` the same function in plain XLA with O(T·block) memory (lax loops and a
recomputing custom VJP); `cached_attention` serves a decode step against a head-major KV cache.
"""

from kernels_pallas.attention import gpu, tpu
from kernels_pallas.attention.blockwise import blockwise_attention
from kernels_pallas.attention.cached import cached_attention
from kernels_pallas.attention.common import SUPPORTED_HEAD_DIMS, check_inputs
from kernels_pallas.attention.reference import attention_reference

_VARIANTS = {"gpu": gpu, "tpu": tpu}


def flash_attention(q, k, v, *, platform: str = "gpu", **options):
    """q (B, T, Hq, D), k/v (B, S, Hkv, D) -> (B, T, Hq, D). options: causal, segment_ids, sm_scale,
    block_q, block_k, interpret (see kernels_pallas.attention.common.build)."""
    if platform not in _VARIANTS:
        raise ValueError(f"flash_attention: unknown Pallas platform {platform!r}; choose 'gpu' or 'tpu'")
    return _VARIANTS[platform].flash_attention(q, k, v, **options)


__all__ = ["SUPPORTED_HEAD_DIMS", "attention_reference", "blockwise_attention", "cached_attention", "check_inputs",
           "flash_attention"]
