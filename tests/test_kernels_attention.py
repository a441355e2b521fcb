"""Flash attention kernels (GPU/Triton and TPU/Mosaic variants in interpret mode) against the
XLA reference: output and dq, dk, dv. See kernel_helpers for the tolerances."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.attention import attention_reference, flash_attention

from kernel_helpers import as_f32, assert_close, value_and_grads


def _inputs(b, t, s, hq, hkv, d, dtype, segments, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(ks[0], (b, t, hq, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, s, hkv, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, s, hkv, d), jnp.float32).astype(dtype)
    do = jax.random.normal(ks[3], (b, t, hq, d), jnp.float32)
    seg = None
    if segments:  # packed documents: ids increase along the row, ~3 documents per row
        seg = 1 + jnp.cumsum(jax.random.bernoulli(ks[4], 2.5 / t, (b, t)), axis=1).astype(jnp.int32)
    return q, k, v, do, seg


def _check(platform, interpret, b, t, s, hq, hkv, d, causal, segments, dtype, block_q, block_k, seed=0,
           window=None):
    q, k, v, do, seg = _inputs(b, t, s, hq, hkv, d, dtype, segments, seed)
    kernel = lambda q, k, v: flash_attention(q, k, v, causal=causal, segment_ids=seg, platform=platform,  # noqa: E731
                                             block_q=block_q, block_k=block_k, interpret=interpret,
                                             sliding_window=window)
    reference = lambda q, k, v: attention_reference(q, k, v, causal=causal, segment_ids=seg,  # noqa: E731
                                                    sliding_window=window)
    out, grads = value_and_grads(kernel, (q, k, v), do)
    ref_out, ref_grads = value_and_grads(reference, as_f32(q, k, v), do)
    assert out.dtype == dtype
    assert_close(out, ref_out, dtype, "output")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, r, dtype, name)


# (batch, T, S, Hq, Hkv, head_dim, causal, segments, dtype): GQA ratios 1/2/4/8, head dims
# 64/96/128, lengths that are not block multiples, T != S, causal or not, packed or not.
GPU_CASES = [
    (1, 100, 100, 2, 2, 64, True, False, jnp.float32),
    (1, 77, 77, 4, 2, 96, True, True, jnp.float32),
    (2, 64, 64, 8, 2, 128, False, True, jnp.bfloat16),
    (1, 50, 50, 8, 1, 64, True, True, jnp.bfloat16),
    (1, 30, 70, 4, 1, 96, True, False, jnp.float32),
]


@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c[:8])) + f"-{jnp.dtype(c[8]).name}")
def test_gpu_kernel_matches_reference(case):
    _check("gpu", True, *case, block_q=32, block_k=16)


TPU_CASES = [  # blocks are >= 128 on TPU, so sequences of 130-200 cover padding and several blocks
    ((1, 200, 200, 4, 1, 64, True, True, jnp.float32), True),
    ((1, 130, 260, 4, 2, 96, True, False, jnp.bfloat16), "tpu-interpreter"),
]


@pytest.mark.parametrize("case,interpret", TPU_CASES, ids=["gqa4-seg-f32", "gqa2-cross-bf16-tpu-interpreter"])
def test_tpu_kernel_matches_reference(case, interpret):
    # "tpu-interpreter": the Mosaic-specific interpreter (memory spaces, DMA semantics).
    interpret = pltpu.InterpretParams() if interpret == "tpu-interpreter" else interpret
    _check("tpu", interpret, *case, block_q=128, block_k=128)


# Sliding windows (case, window): windows shorter than a block and longer than several, so whole key
# blocks are skipped before the window and blocks are masked at both of its edges.
GPU_WINDOW_CASES = [
    ((1, 100, 100, 4, 2, 64, True, True, jnp.float32), 37),
    ((1, 30, 70, 2, 1, 96, True, False, jnp.bfloat16), 9),
]


@pytest.mark.parametrize("case,window", GPU_WINDOW_CASES, ids=["w37-seg", "t<s-w9-bf16"])
def test_gpu_kernel_sliding_window_matches_reference(case, window):
    _check("gpu", True, *case, block_q=32, block_k=16, window=window)


@pytest.mark.parametrize("t,s,bq,bk,window", [(100, 100, 32, 16, 37), (30, 70, 16, 16, 9), (300, 300, 128, 128, 1),
                                              (64, 64, 16, 32, 40), (40, 120, 16, 16, 100)])
def test_window_block_ranges_visit_exactly_the_visible_blocks(t, s, bq, bk, window):
    """The kernels visit key blocks [window_first_kv_block, causal_kv_blocks) per query block and
    query blocks [causal_first_q_block, window_end_q_block) per key block: exactly the block pairs
    with a visible entry (so skipping never drops a key and never visits a hidden block)."""
    from kernels_pallas.attention import common

    cfg = common.Config(causal=True, sm_scale=1.0, block_q=bq, block_k=bk, seq_q=t, seq_k=s, groups=1, head_dim=64,
                        window=window)
    n_q, n_k = -(-t // bq), -(-s // bk)
    for i in range(n_q):
        for j in range(n_k):
            visible = bool(jnp.any(common.block_mask(cfg, i * bq, j * bk, bq, bk)
                                   & (jnp.arange(bq)[:, None] + i * bq < t)))  # real queries only
            by_query = int(common.window_first_kv_block(cfg, i, n_k)) <= j < int(common.causal_kv_blocks(cfg, i, n_k))
            by_key = int(common.causal_first_q_block(cfg, j, n_q)) <= i < int(common.window_end_q_block(cfg, j, n_q))
            assert by_query == by_key == visible or (i == n_q - 1 and visible <= by_query == by_key), (i, j)


@pytest.mark.parametrize("case,window,interpret", [
    ((1, 400, 400, 2, 1, 64, True, False, jnp.float32), 100, True),
    ((1, 260, 260, 4, 2, 64, True, True, jnp.float32), 100, "tpu-interpreter"),
], ids=["w100", "w100-seg-tpu-interpreter"])
def test_tpu_kernel_sliding_window_matches_reference(case, window, interpret):
    interpret = pltpu.InterpretParams() if interpret == "tpu-interpreter" else interpret
    _check("tpu", interpret, *case, block_q=128, block_k=128, window=window)


def test_fully_masked_rows_give_zeros_not_nan():
    # Query 0 is in a segment with no keys (its id never occurs among the keys).
    q, k, v, do, _ = _inputs(1, 20, 20, 2, 1, 64, jnp.float32, False)
    q_seg = jnp.concatenate([jnp.full((1, 1), 7), jnp.ones((1, 19))], axis=1).astype(jnp.int32)
    seg = (q_seg, jnp.ones((1, 20), jnp.int32))
    out, grads = value_and_grads(lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, interpret=True,
                                                                 block_q=16, block_k=16), (q, k, v), do)
    ref, ref_grads = value_and_grads(lambda q, k, v: attention_reference(q, k, v, segment_ids=seg), (q, k, v), do)
    assert float(jnp.max(jnp.abs(out[:, 0]))) == 0.0
    assert_close(out, ref, jnp.float32)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, jnp.float32)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(1, 70), groups=st.sampled_from([1, 2, 4]), hkv=st.integers(1, 2),
       d=st.sampled_from([32, 64, 96]), causal=st.booleans(), segments=st.booleans(), seed=st.integers(0, 99))
def test_gpu_kernel_property_random_small_shapes(t, groups, hkv, d, causal, segments, seed):
    _check("gpu", True, 1, t, t, hkv * groups, hkv, d, causal, segments, jnp.float32, 16, 16, seed)


def test_bad_inputs_name_what_is_supported():
    q = jnp.zeros((1, 16, 4, 64))
    with pytest.raises(ValueError, match="4 query heads are not a multiple of 3 kv heads"):
        flash_attention(q, jnp.zeros((1, 16, 3, 64)), jnp.zeros((1, 16, 3, 64)), interpret=True)
    with pytest.raises(ValueError, match="must share one dtype"):
        flash_attention(q, jnp.zeros((1, 16, 2, 64), jnp.bfloat16), jnp.zeros((1, 16, 2, 64), jnp.bfloat16))
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported; supported: \(32, 64, 96, 128\)"):
        flash_attention(jnp.zeros((1, 16, 2, 48)), jnp.zeros((1, 16, 1, 48)), jnp.zeros((1, 16, 1, 48)))
    with pytest.raises(ValueError, match="block_q must be a power of two"):
        flash_attention(q, q, q, block_q=48, interpret=True)
    with pytest.raises(ValueError, match="unknown Pallas platform 'cuda'; choose 'gpu' or 'tpu'"):
        flash_attention(q, q, q, platform="cuda")
