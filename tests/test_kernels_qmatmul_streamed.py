"""The chunked XLA quantized matmul (kernels_pallas.qmatmul.streamed), the CPU's quantized path:
equal to the one-dot reference in value and in the gradient with respect to x, and inside a loop
it holds one chunk of float weight, where the reference makes XLA:CPU hoist a float copy of the
whole weight out of the loop.

Tolerance: max |streamed - reference| / max(1, max |reference|) <= 1e-5 in float32 (both dequantize
in float32 and accumulate in float32; the summation order differs, and per-channel scales are
applied after the sum instead of before).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.qmatmul import qmatmul_reference, qmatmul_streamed
from kernels_pallas.qmatmul.streamed import chunk_rows

from kernel_helpers import assert_close

# (bits, group or None = per channel, symmetric)
FORMATS = [(8, None, True), (8, None, False), (8, 64, True), (4, 128, True), (4, None, True), (4, 32, False)]


def _weights(k, n, bits, group, symmetric, seed=0):
    rng = np.random.default_rng(seed)
    g = group or k
    # At 4 bits every byte is two valid codes; at 8 bits every byte is one.
    codes = jnp.asarray(rng.integers(0, 256, (k // (2 if bits == 4 else 1), n)), jnp.uint8)
    scale = jnp.asarray(rng.uniform(0.002, 0.02, (k // g, n)), jnp.float32 if bits == 8 else jnp.float16)
    zero = None if symmetric else jnp.asarray(rng.integers(0, 2 ** bits, (k // g, n)), jnp.uint8)
    return codes, scale, zero


@pytest.mark.parametrize("bits,group,symmetric", FORMATS)
@pytest.mark.parametrize("chunk_bytes", [8 << 10, 1 << 30])  # many chunks; one chunk (no loop)
def test_streamed_equals_the_reference(bits, group, symmetric, chunk_bytes):
    k, n = 512, 96
    codes, scale, zero = _weights(k, n, bits, group, symmetric)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, k)), jnp.float32)
    rows = chunk_rows(k, n, group or k, bits, chunk_bytes)
    assert (rows == k) if chunk_bytes > 1 << 20 else (rows < k)
    got = qmatmul_streamed(x, codes, scale, zero, bits=bits, chunk_bytes=chunk_bytes)
    want = qmatmul_reference(x, codes, scale, zero, bits=bits)
    assert got.shape == (3, 2, n)
    assert_close(got, want, jnp.float32)


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, 128, True), (4, 32, False)])
def test_streamed_gradient_in_x_equals_the_reference(bits, group, symmetric):
    """LoRA on a quantized base trains through this path on a CPU."""
    k, n = 256, 64
    codes, scale, zero = _weights(k, n, bits, group, symmetric, seed=2)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, k)), jnp.float32)
    ct = jnp.asarray(np.random.default_rng(4).standard_normal((4, n)), jnp.float32)

    def loss(f):
        return lambda x: jnp.sum(f(x, codes, scale, zero, bits=bits) * ct)

    got = jax.grad(loss(lambda *a, **kw: qmatmul_streamed(*a, **kw, chunk_bytes=8 << 10)))(x)
    want = jax.grad(loss(qmatmul_reference))(x)
    assert_close(got, want, jnp.float32)


def test_chunks_are_whole_groups_and_divide_k():
    assert chunk_rows(1280, 7168, 1280, 8) == 256  # per channel: ~8 MB of float32
    assert chunk_rows(3584, 1280, 128, 4) == 896  # 1638 rows fit; 7 groups: the largest divisor of 28 <= 12
    for k, n, g, bits in [(1280, 32000, 128, 4), (3584, 1280, 3584, 4), (192, 64, 64, 8), (96, 8, 96, 4)]:
        r = chunk_rows(k, n, g, bits)
        assert k % r == 0 and (r % g == 0 if g < k else r % (8 * (2 if bits == 4 else 1)) == 0 or r == k)


@pytest.mark.parametrize("bits,group", [(8, None), (4, 128)])
def test_in_a_loop_only_a_chunk_of_float_weight_is_held(bits, group):
    """A decode loop over a quantized weight: XLA:CPU hoists the reference's whole-weight dequantize
    out of the loop (a float32 copy in the temporaries), the streamed form keeps one chunk."""
    k, n = 1024, 2048
    codes, scale, zero = _weights(k, n, bits, group, True)
    float_bytes = k * n * 4

    def looped(f):
        return lambda x, c, s: jax.lax.fori_loop(0, 8, lambda i, x: jnp.tanh(f(x, c, s, None, bits=bits)[:, :k]), x)

    def temp_bytes(f):
        x = jax.ShapeDtypeStruct((1, k), jnp.float32)
        return jax.jit(looped(f)).lower(x, codes, scale).compile().memory_analysis().temp_size_in_bytes

    reference = temp_bytes(qmatmul_reference)
    streamed = temp_bytes(lambda *a, **kw: qmatmul_streamed(*a, **kw, chunk_bytes=256 << 10))
    print(f"temporaries: reference {reference / 1e6:.1f} MB, streamed {streamed / 1e6:.2f} MB, "
          f"float weight {float_bytes / 1e6:.1f} MB")
    assert reference >= float_bytes  # the hoisted copy: what the test guards against
    assert streamed < float_bytes / 4


def test_one_chunk_weights_are_not_hoisted_out_of_a_loop_either():
    """A weight of one chunk has no loop of its own: its dequantize must still stay in the caller's
    loop body, not become a float copy computed once before the loop (in the entry computation)."""
    k, n = 512, 512
    codes, scale, _ = _weights(k, n, 8, None, True, 5)

    def looped(x, c, s):
        body = lambda i, x: jnp.tanh(qmatmul_streamed(x, c, s, None, bits=8, chunk_bytes=1 << 30))  # noqa: E731
        return jax.lax.fori_loop(0, 8, body, x)

    text = jax.jit(looped).lower(jax.ShapeDtypeStruct((1, k), jnp.float32), codes, scale).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    assert "while(" in entry and f"f32[{k},{n}]" in text  # the loop, and a float chunk somewhere
    assert f"f32[{k},{n}]" not in entry  # ... but not before the loop


def test_unsupported_bits_name_the_reference():
    codes, scale, _ = _weights(64, 8, 8, None, True)
    with pytest.raises(ValueError, match="qmatmul_reference takes 3 and 2"):
        qmatmul_streamed(jnp.ones((1, 64)), codes, scale, None, bits=3)
