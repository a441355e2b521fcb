"""Every attention and norm shape of the shipped configs lowers for real hardware, checked on a
CPU: the TPU kernels through Mosaic (jax.export, platforms=["tpu"]) and the GPU kernels through
Triton (platforms=["cuda"]). A block shape the hardware rejects fails here, not on a device."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxlm.config.run import load_run_config
from kernels_pallas.attention import flash_attention
from kernels_pallas.rmsnorm import rms_norm, rms_norm_residual

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
TRITON = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
SEQ = 2048  # the training context of the shipped configs (OpenELM, and our default runs)
S = jax.ShapeDtypeStruct


def _shipped_shapes():
    attention, norms = set(), set()
    for name in CONFIGS:
        cfg = load_run_config(name).model
        for spec in cfg.layer_specs:
            attention.add((spec.num_query_heads, spec.num_kv_heads, cfg.head_dim))
        norms.add(cfg.model_dim)
        if cfg.qk_norm:
            norms.add(cfg.head_dim)
    return sorted(attention), sorted(norms)


ATTENTION_SHAPES, NORM_WIDTHS = _shipped_shapes()


def _export(fn, platform, *args):
    return jax.export.export(jax.jit(fn), platforms=[platform],
                             disabled_checks=TRITON if platform == "cuda" else [])(*args)


def test_shipped_configs_are_covered():
    assert len(CONFIGS) >= 10
    assert (32, 8, 128) in ATTENTION_SHAPES and (32, 32, 96) in ATTENTION_SHAPES  # Llama 3 8B, Phi-3
    assert (12, 3, 64) in ATTENTION_SHAPES  # OpenELM-270M's first layers


@pytest.mark.parametrize("platform,kernel_platform", [("tpu", "tpu"), ("cuda", "gpu")])
def test_attention_forward_and_backward_lower(platform, kernel_platform):
    for hq, hkv, d in ATTENTION_SHAPES:
        q, kv, seg = S((1, SEQ, hq, d), jnp.bfloat16), S((1, SEQ, hkv, d), jnp.bfloat16), S((1, SEQ), jnp.int32)

        def fwd_bwd(q, k, v, segment_ids):
            f = lambda q, k, v: jnp.sum(flash_attention(  # noqa: E731
                q, k, v, causal=True, segment_ids=segment_ids, platform=kernel_platform).astype(jnp.float32))
            return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

        exported = _export(fwd_bwd, platform, q, kv, kv, seg)
        assert exported.platforms == (platform,)
        assert "flash_attention_dkv" in exported.mlir_module(), (hq, hkv, d)


@pytest.mark.parametrize("platform,kernel_platform", [("tpu", "tpu"), ("cuda", "gpu")])
def test_attention_with_a_sliding_window_lowers(platform, kernel_platform):
    """Phi-3's and Llama 3's head shapes with a 700-token window at 2048: query blocks past the
    window skip whole key blocks (clipped block index maps on TPU, shifted loop bounds on GPU)."""
    for hq, hkv, d in [(32, 32, 96), (32, 8, 128)]:
        q, kv, seg = S((1, SEQ, hq, d), jnp.bfloat16), S((1, SEQ, hkv, d), jnp.bfloat16), S((1, SEQ), jnp.int32)

        def fwd_bwd(q, k, v, segment_ids):
            f = lambda q, k, v: jnp.sum(flash_attention(  # noqa: E731
                q, k, v, causal=True, segment_ids=segment_ids, platform=kernel_platform,
                sliding_window=700).astype(jnp.float32))
            return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

        exported = _export(fwd_bwd, platform, q, kv, kv, seg)
        assert "flash_attention_dkv" in exported.mlir_module(), (hq, hkv, d)


@pytest.mark.parametrize("platform,kernel_platform", [("tpu", "tpu"), ("cuda", "gpu")])
def test_rms_norm_forward_and_backward_lower(platform, kernel_platform):
    for width in NORM_WIDTHS:
        x, w = S((2, 512, width), jnp.bfloat16), S((width,), jnp.float32)

        def fwd_bwd(x, r, w):
            f = lambda x, r, w: jnp.sum(rms_norm_residual(  # noqa: E731
                x, r, w, platform=kernel_platform)[1].astype(jnp.float32))
            g = lambda x, w: jnp.sum(rms_norm(x, w, platform=kernel_platform).astype(jnp.float32))  # noqa: E731
            return jax.grad(f, argnums=(0, 1, 2))(x, r, w), jax.grad(g, argnums=(0, 1))(x, w)

        exported = _export(fwd_bwd, platform, x, x, w)
        assert "rms_norm_bwd" in exported.mlir_module(), width


def test_export_rejects_an_illegal_tpu_block():
    """The check above can fail: a (7, 100) block of a (64, 256) array is no legal TPU tile."""
    def copy(x_ref, o_ref):
        o_ref[...] = x_ref[...]

    bad = functools.partial(pl.pallas_call, copy, out_shape=S((64, 256), jnp.float32), grid=(2, 2),
                            in_specs=[pl.BlockSpec((7, 100), lambda i, j: (i, j))],
                            out_specs=pl.BlockSpec((7, 100), lambda i, j: (i, j)),
                            compiler_params=pltpu.CompilerParams())()
    with pytest.raises(ValueError, match="divisible by 8 and 128"):
        _export(bad, "tpu", S((64, 256), jnp.float32))
