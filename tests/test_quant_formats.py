"""Quantization formats: error bounds over random weights, packing, storage bits, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlm.errors import JaxlmError
from jaxlm.quant import formats
from jaxlm.quant.formats import Scheme


@functools.partial(jax.jit, static_argnums=1)
def roundtrip(w, scheme):
    packed, scale, zero = formats.quantize(w, scheme)
    return formats.dequantize(packed, scale, zero, scheme), scale


SCHEMES = [Scheme(8, None, True), Scheme(8, 32, False), Scheme(4, 32, True), Scheme(4, 64, False),
           Scheme(4, 128, True), Scheme(4, 128, False), Scheme(3, 64, True), Scheme(3, 32, False),
           Scheme(2, 32, True), Scheme(2, 128, False)]


@settings(max_examples=25, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-4, 2),
       shift=st.floats(-1, 1))
def test_quantize_dequantize_error_within_half_step(scheme, seed, log_scale, shift):
    k, n = 256, 8  # fixed shapes: one compile per scheme
    rng = np.random.default_rng(seed)
    w = (10.0 ** log_scale) * (rng.standard_normal((k, n)) + shift * rng.standard_normal((1, n)))
    w = jnp.asarray(w, jnp.float32)
    back, scale = roundtrip(w, scheme)
    g = scheme.group_size or k
    err = jnp.abs(back - w).reshape(k // g, g, n).max(axis=1)  # per group
    bound = formats.error_bound(scale, scheme)
    assert bool(jnp.all(err <= bound)), float(jnp.max(err / bound))
    # the step is the smallest that covers the range: the bound is not vacuous
    span = (jnp.abs(w) if scheme.symmetric else w).reshape(k // g, g, n)
    levels = (2 ** (scheme.bits - 1) - 1) if scheme.symmetric else scheme.qmax
    width = (span.max(axis=1) if scheme.symmetric
             else jnp.maximum(span.max(axis=1), 0) - jnp.minimum(span.min(axis=1), 0))
    assert bool(jnp.all(scale.astype(jnp.float32) <= width / levels * 1.002 + 2.0 ** -24))


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_pack_unpack_roundtrip_and_size(bits):
    rng = np.random.default_rng(bits)
    codes = jnp.asarray(rng.integers(0, 2 ** bits, (3, 64, 5)), jnp.uint8)
    packed = formats.pack(codes, bits)
    assert packed.dtype == jnp.uint8 and packed.shape == (3, 64 // formats.PER_BYTE[bits], 5)
    np.testing.assert_array_equal(formats.unpack(packed, bits), codes)


def test_int4_two_codes_per_byte_low_nibble_first():
    codes = jnp.asarray([[1], [15], [7], [2]], jnp.uint8)
    np.testing.assert_array_equal(formats.pack(codes, 4), [[0xF1], [0x27]])


def test_zero_weights_stay_zero():
    w = jnp.zeros((128, 3))
    for scheme in SCHEMES:
        assert not bool(jnp.any(roundtrip(w, scheme)[0]))


@pytest.mark.parametrize("bits,group", [(5, 128), (1, 32), (16, 32), (4, 48), (4, 100)])
def test_unsupported_bits_or_group_is_a_clear_error(bits, group):
    with pytest.raises(JaxlmError, match="unsupported"):
        Scheme(bits, group)


def test_group_not_dividing_input_dim_falls_back_to_the_largest_that_does():
    assert Scheme(4, 128).group_for(192) == 64 and Scheme(4, 64).group_for(96) == 32
    assert Scheme(4, 32).group_for(200) == 200  # no supported group divides 200: per channel
    w = jax.random.normal(jax.random.key(0), (96, 4))
    codes, scale, zero = formats.quantize(w, Scheme(4, 64))
    assert scale.shape == (3, 4)  # groups of 32, recorded by the scale shape
    back = formats.dequantize(codes, scale, zero, Scheme(4, 64))
    assert float(jnp.abs(back - w).max()) < float(jnp.abs(w).max()) / 7 + 1e-6


def test_input_dim_not_fitting_packed_codes_is_a_clear_error():
    with pytest.raises(JaxlmError, match="not a multiple of 2"):
        formats.quantize(jnp.ones((95, 4)), Scheme(4, None))
