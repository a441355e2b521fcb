"""Pick a kernel implementation per backend.

impl: "xla" (reference, works everywhere), "pallas" (kernels_pallas), "cudnn" (attention through
`jax.nn.dot_product_attention` on GPU), or "auto": the entry of `AUTO` for the current backend.

"pallas" runs the Triton kernels on GPU and the Mosaic kernels on TPU. On a CPU there is no
compiler for either, so "pallas" runs a kernel in Pallas interpret mode (slow; for tests):
the GPU variant by default, the TPU variant (in the TPU interpreter) when the environment
variable JAXLM_PALLAS_INTERPRET=tpu. Kernel input errors become JaxlmError.
"""

from __future__ import annotations

import os

import jax

import kernels_pallas.attention as pallas_attention
import kernels_pallas.rmsnorm as pallas_rmsnorm
from jaxlm.errors import JaxlmError
from kernels_pallas.attention import attention_reference
from kernels_pallas.rmsnorm import rms_norm_reference, rms_norm_residual_reference

# What "auto" picks, per backend and op. Fill from benchmark results
# (experiments/bench_kernels.py writes the measured winners into experiments/results/kernels.md);
# a backend stays on XLA until it is measured. CPU always uses XLA (kernels only interpret there).
AUTO: dict[str, dict[str, str]] = {
    "cpu": {"attention": "xla", "rms_norm": "xla"},
    "gpu": {"attention": "xla", "rms_norm": "xla"},  # unmeasured: no GPU lent yet
    "tpu": {"attention": "xla", "rms_norm": "xla"},  # unmeasured: no TPU lent yet
}

IMPLS = ("auto", "xla", "pallas", "cudnn")
INTERPRET_ENV = "JAXLM_PALLAS_INTERPRET"


def resolve_impl(impl: str, op: str) -> str:
    """'auto' -> the table's choice for this backend; other values are checked and returned."""
    if impl not in IMPLS:
        raise JaxlmError(f"unknown kernel impl {impl!r} for {op}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return AUTO.get(jax.default_backend(), {}).get(op, "xla")
    return impl


def pallas_target() -> tuple[str, object]:
    """(kernel platform "gpu" | "tpu", interpret option) for impl="pallas" on the current backend."""
    backend = jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        return "gpu", False
    if backend == "tpu":
        return "tpu", False
    variant = os.environ.get(INTERPRET_ENV, "gpu")
    if variant == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return "tpu", pltpu.InterpretParams()
    if variant != "gpu":
        raise JaxlmError(f"{INTERPRET_ENV}={variant!r}: choose 'gpu' (Triton kernels) or 'tpu' (Mosaic kernels)")
    return "gpu", True


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, impl: str = "auto") -> jax.Array:
    """RMSNorm over the last axis: float32 statistics, result in x.dtype."""
    impl = resolve_impl(impl, "rms_norm")
    if impl == "pallas":
        platform, interpret = pallas_target()
        with _as_jaxlm_error():
            return pallas_rmsnorm.rms_norm(x, weight, eps, platform=platform, interpret=interpret)
    return rms_norm_reference(x, weight, eps)  # "xla", and "cudnn" (no cuDNN RMSNorm in JAX)


def rms_norm_residual(x: jax.Array, residual: jax.Array, weight: jax.Array, eps: float,
                      impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """h = x + residual; returns (h, rms_norm(h)). The Pallas kernel does both in one pass."""
    impl = resolve_impl(impl, "rms_norm")
    if impl == "pallas":
        platform, interpret = pallas_target()
        with _as_jaxlm_error():
            return pallas_rmsnorm.rms_norm_residual(x, residual, weight, eps, platform=platform,
                                                    interpret=interpret)
    return rms_norm_residual_reference(x, residual, weight, eps)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
              segment_ids: jax.Array | None = None, q_positions: jax.Array | None = None,
              kv_positions: jax.Array | None = None, impl: str = "auto") -> jax.Array:
    """q: (B, T, Hq, D), k/v: (B, S, Hkv, D) -> (B, T, Hq, D). See `attention_reference`.

    Explicit positions (decoding against a KV cache) always take the XLA path: decode
    attention is memory-bound and has no fused kernel here.
    """
    impl = resolve_impl(impl, "attention")
    decode = q_positions is not None or kv_positions is not None
    _check_attention(q, k, v, same_dtype=impl != "xla" and not decode)
    if impl == "xla" or decode:
        return attention_reference(q, k, v, causal=causal, segment_ids=segment_ids,
                                   q_positions=q_positions, kv_positions=kv_positions)
    if impl == "pallas":
        platform, interpret = pallas_target()
        with _as_jaxlm_error():
            return pallas_attention.flash_attention(q, k, v, causal=causal, segment_ids=segment_ids,
                                                    platform=platform, interpret=interpret)
    return _cudnn_attention(q, k, v, causal=causal, segment_ids=segment_ids)


def _cudnn_attention(q, k, v, *, causal: bool, segment_ids):
    """jax.nn.dot_product_attention(implementation="cudnn"). Packed segments become a dense
    (B, 1, T, S) mask (cuDNN through jax.nn has no segment-id input)."""
    if jax.default_backend() != "gpu":
        raise JaxlmError(f"attention impl 'cudnn' needs a GPU backend (this one is {jax.default_backend()!r}); "
                         f"use 'pallas' or 'xla'")
    if causal and q.shape[1] != k.shape[1]:  # jax.nn aligns the causal mask top-left; the model aligns bottom-right
        return attention_reference(q, k, v, causal=causal, segment_ids=segment_ids)
    mask = None
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        mask = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")


def _check_attention(q, k, v, same_dtype: bool) -> None:
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise JaxlmError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} must be (batch, seq, heads, head_dim) "
                         f"with matching batch and head_dim, and k, v of one shape")
    if q.shape[2] % k.shape[2]:
        raise JaxlmError(f"attention: {q.shape[2]} query heads are not a multiple of {k.shape[2]} kv heads; "
                         f"choose num_kv_heads dividing num_query_heads")
    if same_dtype and not (q.dtype == k.dtype == v.dtype):  # the XLA path promotes (e.g. a bf16 KV cache)
        raise JaxlmError(f"attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one "
                         f"of float32, bfloat16")


class _as_jaxlm_error:
    """Turn a kernel's ValueError (unsupported shape or dtype) into a JaxlmError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is ValueError and str(err).startswith(("flash_attention", "rms_norm")):
            raise JaxlmError(str(err)) from err
        return False
