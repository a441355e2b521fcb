"""Pick a kernel implementation for the platform a program is built for.

impl: "xla" (plain XLA, works everywhere; attention is blockwise), "pallas"
(kernels_pallas), "cudnn" (attention through `jax.nn.dot_product_attention` on GPU), or "auto":
the entry of `AUTO` for the target platform.

The target platform is that of the devices the program is compiled for: the active mesh's
devices (`jaxlm.parallel.use_mesh`, set by the train step and `jaxlm compile`), else the
process's default backend. So a TPU-pod train step compiled from a CPU host gets the Mosaic
kernels, not the CPU fallback.

"pallas" runs the Triton kernels on GPU and the Mosaic kernels on TPU. On a CPU there is no
compiler for either, so "pallas" runs a kernel in Pallas interpret mode (slow; for tests):
the GPU variant by default, the TPU variant (in the TPU interpreter) when the environment
variable JAXLM_PALLAS_INTERPRET=tpu. Under a mesh every kernel runs per device shard
(`jaxlm.ops.sharded.per_shard`). Kernel input errors become JaxlmError.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

import kernels_pallas.attention as pallas_attention
import kernels_pallas.rmsnorm as pallas_rmsnorm
from jaxlm.errors import JaxlmError
from jaxlm.ops import choices, paged
from jaxlm.ops.policy import KERNEL_BASIS, POLICIES, policy
from jaxlm.ops.sharded import per_shard
from jaxlm.parallel import rules
from kernels_pallas.attention import blockwise_attention, cached_attention as cached_attention_xla
from kernels_pallas.rmsnorm import rms_norm_reference, rms_norm_residual_reference

# What "auto" picks per platform and op, and what each choice rests on: views of the policy records
# (jaxlm/ops/policy.py, where the reasons are written).
AUTO: dict[str, dict[str, str]] = {platform: record.kernels for platform, record in POLICIES.items()}
AUTO_BASIS = KERNEL_BASIS

IMPLS = ("auto", "xla", "pallas", "cudnn")
INTERPRET_ENV = "JAXLM_PALLAS_INTERPRET"
QKV_AXES = ("batch", None, "heads", None)  # (B, T, H, D) for per_shard
SEGMENT_AXES = ("batch", None)  # (B, T)


def target_platform() -> str:
    """"cpu" | "gpu" | "tpu": the platform of the active mesh's devices, else the default backend."""
    mesh = rules.current_mesh()
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def resolve_impl(impl: str, op: str, platform: str | None = None) -> str:
    """'auto' -> the table's choice for the target platform; other values are checked and returned."""
    if impl not in IMPLS:
        raise JaxlmError(f"unknown kernel impl {impl!r} for {op}; choose one of {', '.join(IMPLS)}")
    if impl == "auto":
        return AUTO.get(platform or target_platform(), {}).get(op, "xla")
    return impl


def pallas_target(platform: str | None = None) -> tuple[str, object]:
    """(kernel platform "gpu" | "tpu", interpret option) for impl="pallas" on the target platform."""
    platform = platform or target_platform()
    if platform in ("gpu", "tpu"):
        return platform, False
    variant = os.environ.get(INTERPRET_ENV, "gpu")
    if variant == "tpu":
        return "tpu", pltpu.InterpretParams()
    if variant != "gpu":
        raise JaxlmError(f"{INTERPRET_ENV}={variant!r}: choose 'gpu' (Triton kernels) or 'tpu' (Mosaic kernels)")
    return "gpu", True


def _norm_axes(ndim: int) -> tuple:
    """(B, T, D) activations split on batch; (B, T, H, hd) (QK-norm) also on heads."""
    return ("batch", None, "heads", None) if ndim == 4 else ("batch",) + (None,) * (ndim - 1)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, impl: str = "auto") -> jax.Array:
    """RMSNorm over the last axis: float32 statistics, result in x.dtype."""
    impl = resolve_impl(impl, "rms_norm")
    if impl == "pallas":
        platform, interpret = pallas_target()
        choices.note("rms_norm", choices.pallas_name(platform, interpret))
        kernel = functools.partial(pallas_rmsnorm.rms_norm, eps=eps, platform=platform, interpret=interpret)
        with as_jaxlm_error():
            pallas_rmsnorm.check_inputs(x, weight)
            return per_shard(kernel, (x, weight), (_norm_axes(x.ndim), (None,)), _norm_axes(x.ndim))
    choices.note("rms_norm", "xla", "no cuDNN RMSNorm in JAX" if impl == "cudnn" else "")
    return rms_norm_reference(x, weight, eps)


def rms_norm_residual(x: jax.Array, residual: jax.Array, weight: jax.Array, eps: float,
                      impl: str = "auto") -> tuple[jax.Array, jax.Array]:
    """h = x + residual; returns (h, rms_norm(h)). The Pallas kernel does both in one pass."""
    impl = resolve_impl(impl, "rms_norm")
    if impl == "pallas":
        platform, interpret = pallas_target()
        choices.note("rms_norm", choices.pallas_name(platform, interpret))
        kernel = functools.partial(pallas_rmsnorm.rms_norm_residual, eps=eps, platform=platform,
                                   interpret=interpret)
        axes = _norm_axes(x.ndim)
        with as_jaxlm_error():
            pallas_rmsnorm.check_inputs(x, weight, residual)
            return per_shard(kernel, (x, residual, weight), (axes, axes, (None,)), (axes, axes))
    choices.note("rms_norm", "xla", "no cuDNN RMSNorm in JAX" if impl == "cudnn" else "")
    return rms_norm_residual_reference(x, residual, weight, eps)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
              segment_ids: jax.Array | None = None, q_positions: jax.Array | None = None,
              kv_positions: jax.Array | None = None, sliding_window: int | None = None,
              impl: str = "auto") -> jax.Array:
    """q: (B, T, Hq, D), k/v: (B, S, Hkv, D) -> (B, T, Hq, D). See `attention_reference`.

    sliding_window W: a query sees keys at positions in (p - W, p] (transformers' convention). Every
    impl applies it: the XLA and Pallas paths skip key blocks wholly outside it; cuDNN gets it as
    jax.nn's local_window_size (W - 1, 0). Without explicit positions, a window at least as long
    as the keys is dropped (it masks nothing).

    Explicit positions (prefill or decode against a KV cache) take the XLA path on every impl:
    the flash kernels' causal mask is aligned by index (key s <= query t + S - T), which is not
    that of a prompt written at the start of a longer cache. cuDNN (through jax.nn) has no
    segment ids and aligns its causal mask top-left, so segments and causal T != S take the
    XLA path too. The XLA path is `blockwise_attention` (O(T·block) memory); on a CPU it is as
    fast as the dense reference for decode and faster for everything else (docs/kernels.md).
    """
    platform = target_platform()
    impl = resolve_impl(impl, "attention", platform)
    if impl == "cudnn" and platform != "gpu":
        raise JaxlmError(f"attention impl 'cudnn' needs a GPU target (this one is {platform!r}); "
                         f"use 'pallas' or 'xla'")
    explicit = q_positions is not None or kv_positions is not None
    if sliding_window is not None and (not causal or sliding_window < 1):
        raise JaxlmError(f"attention: sliding_window {sliding_window} needs causal attention and a window >= 1")
    if sliding_window is not None and not explicit and sliding_window >= k.shape[1]:
        sliding_window = None  # no key is ever sliding_window or more positions behind a query
    impl, fallback = _attention_fallback(impl, q, k, segment_ids, causal, explicit)
    _check_attention(q, k, v, same_dtype=impl != "xla")
    if impl == "xla":
        choices.note("attention", "xla", fallback)
        return blockwise_attention(q, k, v, causal=causal, segment_ids=segment_ids, q_positions=q_positions,
                                   kv_positions=kv_positions, sliding_window=sliding_window)
    if impl == "pallas":
        kernel_platform, interpret = pallas_target(platform)
        choices.note("attention", choices.pallas_name(kernel_platform, interpret))
        kernel = functools.partial(pallas_attention.flash_attention, causal=causal, platform=kernel_platform,
                                   interpret=interpret, sliding_window=sliding_window)
    else:
        choices.note("attention", "cudnn")
        window = None if sliding_window is None else (sliding_window - 1, 0)  # (left, right) keys, own excluded
        kernel = functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="cudnn",
                                   local_window_size=window)
    with as_jaxlm_error():
        if impl == "pallas":
            pallas_attention.check_inputs(q, k, v, segment_ids)  # names the global shapes, not a shard's
        if segment_ids is None:
            return per_shard(kernel, (q, k, v), (QKV_AXES,) * 3, QKV_AXES)
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        return per_shard(lambda q, k, v, qs, ks: kernel(q, k, v, segment_ids=(qs, ks)), (q, k, v, q_seg, kv_seg),
                         (QKV_AXES,) * 3 + (SEGMENT_AXES,) * 2, QKV_AXES)


def _attention_fallback(impl: str, q, k, segment_ids, causal: bool, explicit: bool) -> tuple[str, str]:
    """(impl that runs, why it differs from `impl`): explicit positions take XLA on every impl; jax.nn's
    cuDNN call has no float32 kernel, no segment ids and no bottom-right causal mask."""
    if explicit and impl != "xla":
        return "xla", "explicit positions"
    if impl == "cudnn" and q.dtype == jnp.float32:
        return "xla", "cuDNN has no float32 attention"
    if impl == "cudnn" and segment_ids is not None:
        return "xla", "cuDNN through jax.nn takes no segment ids"
    if impl == "cudnn" and causal and q.shape[1] != k.shape[1]:
        return "xla", "cuDNN's causal mask is top-left"
    return impl, ""


# Query lengths up to this attend to the cache directly (scores O(T·S)); longer ones (a prompt
# prefilled against the cache) take `attention`'s blockwise path, O(T·block).
CACHED_QUERIES = 16


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array, *,
                     sliding_window: int | None = None, impl: str = "auto") -> jax.Array:
    """q (B, T, Hq, D) at q_positions (B, T) against a KV cache k/v (B, Hkv, S, D), head-major, slot s
    holding position s -> (B, T, Hq, D). Every impl runs XLA here (see `attention` on explicit
    positions); a decode step reads the cache in its stored layout, with no transpose."""
    asked = resolve_impl(impl, "attention")
    if sliding_window is not None and sliding_window < 1:
        raise JaxlmError(f"attention: sliding_window {sliding_window} needs a window >= 1")
    paged_why = ""
    if isinstance(k, paged.PagedKV):  # a paged cache (jaxlm.model.paged_kv): the TPU kernel, else a gathered view
        tpu = asked == "pallas" and pallas_target()[0] == "tpu"
        paged_why = paged.kernel_skip_reason(q, k, sliding_window) if tpu else ""
        if tpu and not paged_why:
            choices.note("attention", choices.pallas_name(*pallas_target()))
            return paged.paged_attention(q, k, v, q_positions, interpret=pallas_target()[1])
        k, v = k.view(q.dtype), v.view(q.dtype)
    if q.shape[1] <= CACHED_QUERIES:
        choices.note("attention", "xla", "" if asked == "xla" else paged_why or "queries against the KV cache")
        if policy(target_platform()).cached_attention_in_f32 and q.dtype != jnp.float32:
            f32 = [x.astype(jnp.float32) for x in (q, k, v)]
            return cached_attention_xla(*f32, q_positions, sliding_window).astype(q.dtype)
        return cached_attention_xla(q, k, v, q_positions, sliding_window)
    b, s = k.shape[0], k.shape[2]
    kv_pos = jnp.broadcast_to(jnp.arange(s), (b, s))
    return attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), causal=True, q_positions=q_positions,
                     kv_positions=kv_pos, sliding_window=sliding_window, impl=impl)


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


class as_jaxlm_error:
    """Turn a kernel's ValueError (unsupported shape or dtype) into a JaxlmError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is ValueError and str(err).startswith(("flash_attention", "rms_norm", "qmatmul")):
            raise JaxlmError(str(err)) from err
        return False
