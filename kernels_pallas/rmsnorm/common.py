"""RMSNorm math shared by the GPU and TPU kernels, and the custom VJP that wires them up.

The kernels see a 2-D view: rows (R = product of the leading axes) by features (D).
Forward:  rstd = 1 / sqrt(mean(x^2) + eps);  y = cast(x * rstd) * cast(w)   (float32 statistics)
Backward: g = dy * w;  dx = rstd * (g - xhat * mean(g * xhat));  dw = sum_rows(dy * cast(xhat))
With the residual add fused in front (pre-norm block): h = x + residual, y = norm(h); the
cotangent of h (from the residual stream) is added to dx, and dx = dresidual.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def forward_math(x: jax.Array, w: jax.Array, eps: float, d: int):
    """x (rows, Dp), w (1, Dp); columns >= d must hold zeros. Returns (y in x.dtype, rstd (rows, 1) f32)."""
    x32 = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.sum(x32 * x32, axis=1, keepdims=True) / d + eps)
    y = (x32 * rstd).astype(x.dtype) * w.astype(x.dtype)
    return y, rstd


def backward_math(x: jax.Array, w: jax.Array, dy: jax.Array, rstd: jax.Array, d: int):
    """Returns (dx f32 (rows, Dp), dw contribution f32 (rows, Dp)) for one block of rows."""
    x32 = x.astype(jnp.float32)
    xhat = x32 * rstd
    g = dy.astype(jnp.float32) * w.astype(jnp.float32)
    c = jnp.sum(g * xhat, axis=1, keepdims=True) / d
    dx = rstd * (g - xhat * c)
    dw = dy.astype(jnp.float32) * xhat.astype(x.dtype).astype(jnp.float32)
    return dx, dw


@dataclasses.dataclass(frozen=True)
class NormOptions:
    """Static kernel options (hashable: they are a non-differentiable argument)."""

    block_rows: int | None = None  # rows per program; None = the platform default
    interpret: Any = False  # True, or pltpu.InterpretParams() for the TPU interpreter


def check_inputs(x: jax.Array, weight: jax.Array, residual: jax.Array | None = None) -> None:
    if x.ndim < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight must have shape ({x.shape[-1] if x.ndim else '?'},) matching the "
                         f"last axis of x {x.shape}, got {weight.shape}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"rms_norm: x dtype {x.dtype} is not supported; use float32, bfloat16 or float16")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rms_norm_residual: residual {residual.shape} {residual.dtype} must match "
                         f"x {x.shape} {x.dtype}")


ForwardFn = Callable[..., tuple]  # (x2, res2 | None, w, eps, opts) -> (y2, h2 | None, rstd (R, 1))
BackwardFn = Callable[..., tuple]  # (h2, w, dy2, rstd, dh2 | None, opts) -> (dx2, dw (D,) f32)


def build(forward: ForwardFn, backward: BackwardFn):
    """Turn a platform's forward/backward kernels into (rms_norm, rms_norm_residual) with custom VJPs."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def _norm(x2, res2, w, eps, opts):
        y2, h2, _ = forward(x2, res2, w, eps, opts)
        return y2, h2

    def _fwd(x2, res2, w, eps, opts):
        y2, h2, rstd = forward(x2, res2, w, eps, opts)
        return (y2, h2), (x2 if h2 is None else h2, w, rstd)

    def _bwd(eps, opts, saved, cts):
        h2, w, rstd = saved
        dy2, dh2 = cts
        dx2, dw = backward(h2, w, dy2, rstd, dh2, opts)
        dw = dw.astype(w.dtype)
        return (dx2, None, dw) if dh2 is None else (dx2, dx2, dw)

    _norm.defvjp(_fwd, _bwd)

    def rms_norm(x, weight, eps: float = 1e-6, **options):
        """x (..., D), weight (D,) -> (..., D) in x.dtype; see `rms_norm_reference` for the math."""
        check_inputs(x, weight)
        y2, _ = _norm(x.reshape(-1, x.shape[-1]), None, weight, float(eps), NormOptions(**options))
        return y2.reshape(x.shape)

    def rms_norm_residual(x, residual, weight, eps: float = 1e-6, **options):
        """h = x + residual; returns (h, rms_norm(h)), both (..., D) in x.dtype, in one pass over memory."""
        check_inputs(x, weight, residual)
        d = x.shape[-1]
        y2, h2 = _norm(x.reshape(-1, d), residual.reshape(-1, d), weight, float(eps), NormOptions(**options))
        return h2.reshape(x.shape), y2.reshape(x.shape)

    return rms_norm, rms_norm_residual
