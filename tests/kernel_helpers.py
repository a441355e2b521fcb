"""Shared checks for the kernel tests: inputs, and the stated tolerances.

Error measure: max |kernel - reference| / max(1, max |reference|), with the reference computed
in float32 from the same (rounded) inputs. Bounds: float32 1e-5; bfloat16 2e-2 (bf16 has an
8-bit mantissa, ~4e-3 per rounding; the kernels and the XLA path round p and ds differently).
"""

import jax
import jax.numpy as jnp
import numpy as np

TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2}


def assert_close(actual, expected, dtype, what: str = ""):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected))))
    assert err <= TOLERANCE[jnp.dtype(dtype)], f"{what}: relative error {err:.3g} > {TOLERANCE[jnp.dtype(dtype)]}"


def value_and_grads(fn, args, cotangent):
    """fn(*args) -> array; returns (output, grads of <output, cotangent> w.r.t. every arg)."""
    def loss(*a):
        out = fn(*a)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    # One jit around forward and backward: interpret-mode kernels compile once, as one program.
    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True))
    (_, out), grads = grad_fn(*args)
    return out, grads


def as_f32(*xs):
    return tuple(x.astype(jnp.float32) for x in xs)
