"""Weight-only quantized matmul kernels (kernels_pallas.qmatmul): the XLA reference against an
independent numpy dequantize-and-matmul and against jaxlm's own format; both Pallas variants in
interpret mode against the reference; lowering for TPU (Mosaic) and CUDA (Triton) at model
shapes; and a real libtpu compile that reads the packed codes, not a float copy of the weight.

Tolerances (max |kernel - reference| / max(1, max |reference|), see kernel_helpers): float32
1e-5 (both dequantize in float32 and accumulate in float32; only the summation order differs),
bfloat16 2e-2 (bf16 x and bf16-rounded weights; the sums still round differently).
"""

import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.qmatmul import check_inputs, dequantize_reference, qmatmul, qmatmul_reference

from kernel_helpers import assert_close

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu not installed (pip install -e '.[tpu]'); CI installs it")
S = jax.ShapeDtypeStruct
TRITON = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]

# (name, bits, group size or None for per-channel, symmetric)
FORMATS = [("int8-per-channel", 8, None, True), ("int4-g128", 4, 128, True), ("int4-asym-g64", 4, 64, False)]


def _numpy_weights(k: int, n: int, bits: int, group: int | None, symmetric: bool, seed: int = 0):
    """Random unpacked codes (K, N), scale, zero in numpy, and the packed uint8 codes, written from the
    format's definition (byte row r holds rows r * per_byte + i at bit offset bits * i)."""
    rng = np.random.default_rng(seed)
    g = group or k
    per_byte = 8 // bits if bits in (2, 4) else 1
    codes = rng.integers(0, 2 ** bits, (k, n)).astype(np.uint8)
    packed = np.zeros((k // per_byte, n), np.uint8)
    for i in range(per_byte):
        packed |= codes[i::per_byte] << np.uint8(bits * i)
    scale = rng.uniform(0.002, 0.02, (k // g, n)).astype(np.float32 if bits == 8 else np.float16)
    zero = None if symmetric else rng.integers(0, 2 ** bits, (k // g, n)).astype(np.uint8)
    return codes, packed, scale, zero


def _numpy_dequantize(codes, scale, zero, bits):
    g = codes.shape[0] // scale.shape[0]
    offset = 2.0 ** (bits - 1) if zero is None else np.repeat(zero.astype(np.float64), g, axis=0)
    return (codes.astype(np.float64) - offset) * np.repeat(scale.astype(np.float64), g, axis=0)


def _jnp(*arrays):
    return tuple(None if a is None else jnp.asarray(a) for a in arrays)


# ---------------------------------------------------------------- the reference (the oracle)

@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (8, 64, False), (4, 128, True), (4, 32, False),
                                                  (3, 64, True), (2, 32, False)])
def test_reference_equals_numpy_dequantize_then_matmul(bits, group, symmetric):
    k, n = 256, 96
    codes, packed, scale, zero = _numpy_weights(k, n, bits, group, symmetric)
    x = np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)
    w = _numpy_dequantize(codes, scale, zero, bits)
    jpacked, jscale, jzero = _jnp(packed, scale, zero)
    np.testing.assert_allclose(np.asarray(dequantize_reference(jpacked, jscale, jzero, bits=bits)), w, rtol=1e-6)
    expected = x.astype(np.float64) @ w
    assert_close(qmatmul_reference(jnp.asarray(x), jpacked, jscale, jzero, bits=bits), expected, jnp.float32, "f32")
    y = qmatmul_reference(jnp.asarray(x, jnp.bfloat16), jpacked, jscale, jzero, bits=bits)
    assert y.dtype == jnp.bfloat16
    assert_close(y, expected, jnp.bfloat16, "bf16")


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (4, 128, True), (4, 64, False)])
def test_reference_reads_jaxlm_quantized_weights(bits, group, symmetric):
    """The codes, scales and zeros that jaxlm.quant.formats writes are the format the kernels read."""
    from jaxlm.quant import formats

    w = jax.random.normal(jax.random.key(0), (512, 192)) * 0.05
    scheme = formats.Scheme(bits, group, symmetric)
    packed, scale, zero = formats.quantize(w, scheme)
    np.testing.assert_array_equal(np.asarray(dequantize_reference(packed, scale, zero, bits=bits)),
                                  np.asarray(formats.dequantize(packed, scale, zero, scheme)))
    x = jax.random.normal(jax.random.key(1), (4, 512))
    y = qmatmul(x, packed, scale, zero, bits=bits, platform="tpu", interpret=True)
    assert_close(y, qmatmul_reference(x, packed, scale, zero, bits=bits), jnp.float32, "tpu kernel")


# ---------------------------------------------------------------- kernels in interpret mode

K, N = 512, 256
# Small blocks so that every format runs several K and N blocks: on TPU 8-bit per-channel has a
# group spanning K blocks, 4-bit g128 two and g64 four groups per block (the 3-D scale path); the
# GPU defaults are one group row per K block (block_k <= g).
TPU_BLOCKS = {8: dict(block_k=128, block_n=128), 4: dict(block_k=256, block_n=128)}


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m", [1, 8, 33])
@pytest.mark.parametrize("name,bits,group,symmetric", FORMATS, ids=[f[0] for f in FORMATS])
def test_kernel_matches_reference(name, bits, group, symmetric, m, dtype, platform):
    _, packed, scale, zero = _jnp(*_numpy_weights(K, N, bits, group, symmetric))
    x = jax.random.normal(jax.random.key(m), (m, K)).astype(dtype)
    blocks = TPU_BLOCKS[bits] if platform == "tpu" else {}
    y = qmatmul(x, packed, scale, zero, bits=bits, platform=platform, interpret=True, **blocks)
    assert y.shape == (m, N) and y.dtype == dtype
    assert_close(y, qmatmul_reference(x.astype(jnp.float32), packed, scale, zero, bits=bits), dtype, name)


@pytest.mark.parametrize("name,bits,group,symmetric", FORMATS, ids=[f[0] for f in FORMATS])
def test_tpu_kernel_default_blocks_in_the_tpu_interpreter(name, bits, group, symmetric):
    """Default blocks (all of K in one block, 2-D scale blocks), leading dims (B, T, K), a float32
    result from bfloat16 x, in the TPU interpreter (it checks the DMAs and the VMEM scratch)."""
    _, packed, scale, zero = _jnp(*_numpy_weights(K, N, bits, group, symmetric))
    x = jax.random.normal(jax.random.key(2), (2, 3, K)).astype(jnp.bfloat16)
    y = qmatmul(x, packed, scale, zero, bits=bits, platform="tpu", out_dtype=jnp.float32,
                interpret=pltpu.InterpretParams())
    assert y.shape == (2, 3, N) and y.dtype == jnp.float32
    assert_close(y, qmatmul_reference(x.astype(jnp.float32), packed, scale, zero, bits=bits), jnp.bfloat16, name)


def test_float16_scale_bits_decode_exactly():
    """The TPU kernel decodes float16 scales from their bits: normal, subnormal, signed, zero, inf."""
    from kernels_pallas.qmatmul.common import f16_bits_to_f32

    values = np.array([0.0, -0.0, 1.0, -2.5, 6.1e-5, 5.96e-8, 3.0e-6, -4.0e-7, 65504.0, np.inf], np.float16)
    decoded = f16_bits_to_f32(jnp.asarray(values.view(np.uint16)))
    np.testing.assert_array_equal(np.asarray(decoded), values.astype(np.float32))


# ---------------------------------------------------------------- lowering for real hardware

MODEL_SHAPES = [(1280, 3584), (3584, 1280)]  # an MLP's up and down projections
TOKENS = {"decode": 1, "prefill": 256}


def _abstract(bits, group, symmetric, k, n, tokens, sharding=None):
    g = group or k
    scale_dtype = jnp.float32 if bits == 8 else jnp.float16
    x = S((1, tokens, k), jnp.bfloat16, sharding=sharding)
    codes = S((k * bits // 8, n), jnp.uint8, sharding=sharding)
    scale = S((k // g, n), scale_dtype, sharding=sharding)
    zero = None if symmetric else S((k // g, n), jnp.uint8, sharding=sharding)
    return x, codes, scale, zero


def _fn(bits, platform, zero_given):
    if zero_given:
        return lambda x, c, s, z: qmatmul(x, c, s, z, bits=bits, platform=platform)
    return lambda x, c, s: qmatmul(x, c, s, None, bits=bits, platform=platform)


@pytest.mark.parametrize("platform,kernel_platform", [("tpu", "tpu"), ("cuda", "gpu")])
@pytest.mark.parametrize("name,bits,group,symmetric", FORMATS, ids=[f[0] for f in FORMATS])
def test_kernels_lower_for_decode_and_prefill(name, bits, group, symmetric, platform, kernel_platform):
    for k, n in MODEL_SHAPES:
        for phase, tokens in TOKENS.items():
            args = [a for a in _abstract(bits, group, symmetric, k, n, tokens) if a is not None]
            exported = jax.export.export(jax.jit(_fn(bits, kernel_platform, not symmetric)), platforms=[platform],
                                         disabled_checks=TRITON if platform == "cuda" else [])(*args)
            assert exported.out_avals[0].shape == (1, tokens, n)
            assert f"qmatmul_int{bits}" in exported.mlir_module(), (name, phase, k, n)


@pytest.fixture(scope="module")
def v5e():
    from jaxlm.aot import topology_devices

    devices = topology_devices("v5e:2x2")
    # A compile-only executable cannot be read back from the persistent compilation cache (it has no
    # client). topology_devices turns the cache off, but that only holds in a process that has not
    # compiled yet, and the interpret-mode tests above have: so keep these entries from being written.
    key = "jax_persistent_cache_min_compile_time_secs"
    before = getattr(jax.config, key)
    jax.config.update(key, float("inf"))
    yield devices
    jax.config.update(key, before)


@needs_libtpu
@pytest.mark.parametrize("name,bits,group,symmetric", FORMATS, ids=[f[0] for f in FORMATS])
def test_decode_compiles_for_v5e_and_reads_only_packed_weights(v5e, name, bits, group, symmetric):
    """libtpu compiles the kernel (Mosaic included) for M = 1, K = 1280, N = 3584. "bytes accessed"
    is XLA's sum over the program: the glue ops (x's even/odd split, the float16 scales' bitcast) as
    XLA measures them, plus the kernel's declared CostEstimate (its pipeline's block fetches). So the
    check that no float weight exists is the HLO itself: no array of K * N floats anywhere, and
    temporaries far below one."""
    k, n = 1280, 3584
    one = jax.sharding.SingleDeviceSharding(v5e[0])
    x, codes, scale, zero = _abstract(bits, group, symmetric, k, n, 1, sharding=one)
    args = [a for a in (x, codes, scale, zero) if a is not None]
    compiled = jax.jit(_fn(bits, "tpu", zero is not None)).lower(*args).compile()
    hlo = compiled.as_text()
    kernels = re.findall(r"%(qmatmul_int\d)[.\d]* = .*custom_call_target=\"tpu_custom_call\"", hlo)
    assert kernels == [f"qmatmul_int{bits}"], kernels

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    accessed = cost["bytes accessed"]
    stored = sum(a.size * a.dtype.itemsize for a in (codes, scale, zero) if a is not None)
    minimum = stored + x.size * 2 + n * 2  # packed weights + x + the bf16 output
    temp = compiled.memory_analysis().temp_size_in_bytes
    print(f"\n{name}: bytes accessed {accessed:,.0f} = {accessed / minimum:.3f} x (packed weights {stored:,} "
          f"+ x + out = {minimum:,}); temp {temp:,} bytes; float32 weight {k * n * 4:,} bytes")
    assert accessed <= 1.3 * minimum
    assert temp < k * n * 4 / 10
    float_arrays = re.findall(r"\b(?:f32|bf16|f16)\[([\d,]+)\]", hlo)
    biggest = max(int(np.prod([int(d) for d in dims.split(",")])) for dims in float_arrays)
    assert biggest < k * n, f"a float array of {biggest} elements: the weight was dequantized outside the kernel"


# ---------------------------------------------------------------- errors name the fix

def test_bad_inputs_raise_value_errors_naming_the_fix():
    x = jnp.zeros((4, 256), jnp.bfloat16)
    codes, scale = jnp.zeros((128, 128), jnp.uint8), jnp.ones((2, 128), jnp.float16)
    check_inputs(x, codes, scale, None, 4)  # the good case passes
    bad = [
        (dict(bits=2, codes=jnp.zeros((64, 128), jnp.uint8)),
         r"^qmatmul: 2-bit codes have no kernel; use bits 8 or 4"),
        (dict(bits=3), r"^qmatmul: 3-bit"),
        (dict(codes=jnp.zeros((100, 128), jnp.uint8)), r"^qmatmul: codes \(100, 128\) hold 200 rows of K .* K = 256"),
        (dict(codes=jnp.zeros((128, 128), jnp.int8)), r"^qmatmul: codes .* must be a \(K / per_byte, N\) uint8"),
        (dict(scale=jnp.ones((3, 128), jnp.float16)), r"^qmatmul: 3 scale rows do not divide K = 256"),
        (dict(scale=jnp.ones((2, 64), jnp.float16)),
         r"^qmatmul: scale \(2, 64\) float16 must be \(K / group_size, 128\)"),
        (dict(scale=jnp.ones((16, 128), jnp.float16)), r"^qmatmul: group size 16 .* multiple of 32"),
        (dict(zero=jnp.zeros((2, 128), jnp.int32)), r"^qmatmul: zero \(2, 128\) int32 must be uint8"),
        (dict(x=jnp.zeros((4, 256), jnp.int32)), r"^qmatmul: x .* must be \(\.\.\., K\) float32 or bfloat16"),
    ]
    for change, message in bad:
        args = dict(x=x, codes=codes, scale=scale, zero=None, bits=4) | change
        with pytest.raises(ValueError, match=message):
            qmatmul(args.pop("x"), args.pop("codes"), args.pop("scale"), args.pop("zero"), **args, interpret=True)
    with pytest.raises(ValueError, match=r"^qmatmul: unknown Pallas platform 'cpu'"):
        qmatmul(x, codes, scale, bits=4, platform="cpu")
    with pytest.raises(ValueError, match=r"^qmatmul \(tpu\): block_k 384 does not fit K = 256"):
        qmatmul(x, codes, scale, bits=4, platform="tpu", block_k=384, interpret=True)
    with pytest.raises(ValueError, match=r"^qmatmul \(gpu\): block_n must be a power of two >= 16 dividing N = 120"):
        qmatmul(x, jnp.zeros((128, 120), jnp.uint8), jnp.ones((2, 120), jnp.float16), bits=4, platform="gpu",
                interpret=True)
