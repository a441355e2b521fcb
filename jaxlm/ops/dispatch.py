"""Pick a kernel implementation per backend.

impl: "xla" (reference, works everywhere), "pallas" (kernels_pallas), "cudnn" (attention through
`jax.nn.dot_product_attention` on GPU), or "auto": the entry of `AUTO` for the current backend.
"""

from __future__ import annotations

import jax

from jaxlm.errors import JaxlmError
from kernels_pallas.attention import attention_reference
from kernels_pallas.rmsnorm import rms_norm_reference

# What "auto" picks, per backend and op. Fill from benchmark results
# (experiments/bench_kernels.py); until a backend is measured it stays on XLA.
AUTO: dict[str, dict[str, str]] = {
    "cpu": {"attention": "xla", "rms_norm": "xla"},
    "gpu": {"attention": "xla", "rms_norm": "xla"},
    "tpu": {"attention": "xla", "rms_norm": "xla"},
}

IMPLS = ("auto", "xla", "pallas", "cudnn")


def resolve_impl(impl: str, op: str) -> str:
    """'auto' -> the table's choice for this backend; other values are checked and returned."""
    if impl not in IMPLS:
        raise JaxlmError(f"unknown kernel impl {impl!r} for {op}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return AUTO.get(jax.default_backend(), {}).get(op, "xla")
    return impl


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, impl: str = "auto") -> jax.Array:
    """RMSNorm over the last axis: float32 statistics, result in x.dtype."""
    impl = resolve_impl(impl, "rms_norm")
    if impl == "xla":
        return rms_norm_reference(x, weight, eps)
    raise JaxlmError(f"rms_norm impl {impl!r} is not available; use 'xla'")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
              segment_ids: jax.Array | None = None, q_positions: jax.Array | None = None,
              kv_positions: jax.Array | None = None, impl: str = "auto") -> jax.Array:
    """q: (B, T, Hq, D), k/v: (B, S, Hkv, D) -> (B, T, Hq, D). See `attention_reference`.

    Explicit positions (decoding against a KV cache) always take the XLA path: decode
    attention is memory-bound and has no fused kernel here.
    """
    impl = resolve_impl(impl, "attention")
    if impl == "xla" or q_positions is not None or kv_positions is not None:
        return attention_reference(q, k, v, causal=causal, segment_ids=segment_ids,
                                   q_positions=q_positions, kv_positions=kv_positions)
    raise JaxlmError(f"attention impl {impl!r} is not available; use 'xla'")
