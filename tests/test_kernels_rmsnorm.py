"""Fused RMSNorm (+ residual) kernels in interpret mode against the XLA reference: outputs,
dx, dresidual and dweight. See kernel_helpers for the tolerances."""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.rmsnorm import rms_norm, rms_norm_reference, rms_norm_residual, rms_norm_residual_reference

from kernel_helpers import as_f32, assert_close


def _inputs(shape, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(ks[0], shape, jnp.float32).astype(dtype)
    r = (3 * jax.random.normal(ks[1], shape, jnp.float32)).astype(dtype)
    w = (1 + 0.2 * jax.random.normal(ks[2], shape[-1:], jnp.float32)).astype(dtype)
    return x, r, w, jax.random.normal(ks[3], shape), jax.random.normal(ks[4], shape)


def _grads(fn, args, dy, dh):
    def loss(*a):
        h, y = fn(*a)
        return jnp.sum(y.astype(jnp.float32) * dy) + jnp.sum(h.astype(jnp.float32) * dh), (h, y)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True))(*args)


# Leading shapes of any rank; widths that are not powers of two (96, 160) and rows that are
# not multiples of the row block.
F32_3D, BF16_4D, F32_2D = ((3, 37, 96), jnp.float32), ((2, 5, 3, 160), jnp.bfloat16), ((50, 64), jnp.float32)
CASES = [  # (platform, interpret, block_rows, (shape, dtype))
    ("gpu", True, 4, F32_3D), ("gpu", True, 4, BF16_4D), ("gpu", True, 16, F32_2D),
    ("tpu", True, 8, F32_3D), ("tpu", True, 8, BF16_4D), ("tpu", "tpu-interpreter", 16, F32_2D),
]


@pytest.mark.parametrize("platform,interpret,block_rows,case", CASES,
                         ids=["gpu-f32-3d", "gpu-bf16-4d", "gpu-f32-2d", "tpu-f32-3d", "tpu-bf16-4d",
                              "tpu-interpreter-f32-2d"])
def test_rms_norm_residual_matches_reference(platform, interpret, block_rows, case):
    shape, dtype = case
    interpret = pltpu.InterpretParams() if interpret == "tpu-interpreter" else interpret
    x, r, w, dy, dh = _inputs(shape, dtype)
    opts = dict(platform=platform, interpret=interpret, block_rows=block_rows)
    (_, (h, y)), grads = _grads(lambda x, r, w: rms_norm_residual(x, r, w, 1e-6, **opts), (x, r, w), dy, dh)
    (_, (h0, y0)), grads0 = _grads(lambda x, r, w: rms_norm_residual_reference(x, r, w, 1e-6), as_f32(x, r, w), dy, dh)
    assert h.dtype == y.dtype == dtype
    assert_close(h, h0, dtype, "h")
    assert_close(y, y0, dtype, "y")
    for name, g, g0, arg in zip(("dx", "dresidual", "dweight"), grads, grads0, (x, r, w)):
        assert g.dtype == arg.dtype
        assert_close(g, g0, dtype, name)

    # The plain norm (no residual) on the same kernel family.
    (_, (_, y)), (dx, dw) = _grads(lambda x, w: (x, rms_norm(x, w, 1e-6, **opts)), (x, w), dy, 0 * dh)
    (_, (_, y0)), (dx0, dw0) = _grads(lambda x, w: (x, rms_norm_reference(x, w, 1e-6)), as_f32(x, w), dy, 0 * dh)
    assert_close(y, y0, dtype, "y (plain)")
    assert_close(dx, dx0, dtype, "dx (plain)")
    assert_close(dw, dw0, dtype, "dweight (plain)")


def test_bad_inputs_name_what_is_supported():
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        rms_norm(jnp.zeros((4, 8)), jnp.ones((6,)), interpret=True)
    with pytest.raises(ValueError, match="must match x"):
        rms_norm_residual(jnp.zeros((4, 8)), jnp.zeros((4, 8), jnp.bfloat16), jnp.ones((8,)), interpret=True)
    with pytest.raises(ValueError, match="int32 is not supported; use float32, bfloat16 or float16"):
        rms_norm(jnp.zeros((4, 8), jnp.int32), jnp.ones((8,), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="block_rows must be a multiple of 8"):
        rms_norm(jnp.zeros((4, 8)), jnp.ones((8,)), platform="tpu", block_rows=12, interpret=True)
