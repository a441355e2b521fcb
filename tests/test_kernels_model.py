"""The model with Pallas kernels (interpret mode on CPU) matches the XLA path; dispatch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import ops
from jaxlm.errors import JaxlmError
from jaxlm.model import build_model
from jaxlm.model.config import ModelConfig


def _tiny(impl: str) -> ModelConfig:
    # Two layer groups (layerwise sizes), GQA 2, QK-norm, head_dim 32: every kernel path in a block.
    return ModelConfig(name="tiny", vocab_size=97, model_dim=64, num_layers=2, head_dim=32,
                       num_query_heads=(2, 4), num_kv_heads=(1, 2), ffn_dim=(96, 128), qk_norm=True,
                       max_context=128, attention_impl=impl, norm_impl=impl)


def _logits_and_grads(impl: str, tokens, segment_ids):
    model = build_model(_tiny(impl), seed=0)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        logits = nnx.merge(graphdef, p)(tokens, segment_ids=segment_ids)
        return jnp.mean(logits ** 2), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads


def test_pallas_model_matches_xla_logits_and_grads():
    tokens = jax.random.randint(jax.random.key(0), (2, 40), 0, 97)
    segment_ids = jnp.concatenate([jnp.ones((2, 25), jnp.int32), jnp.full((2, 15), 2, jnp.int32)], axis=1)
    ref_logits, ref_grads = _logits_and_grads("xla", tokens, segment_ids)
    logits, grads = _logits_and_grads("pallas", tokens, segment_ids)
    np.testing.assert_allclose(logits, ref_logits, atol=2e-5, rtol=2e-5)
    flat_ref, flat = jax.tree.leaves(ref_grads), jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref) > 0
    for g, r in zip(flat, flat_ref):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-4)


def test_dispatch_applies_the_sliding_window_on_every_impl(monkeypatch):
    """xla (blockwise), pallas (interpret) and the arguments cuDNN gets (run here through jax.nn's
    XLA implementation, there being no GPU) all give the reference's window, transformers' convention."""
    from jaxlm.ops import dispatch
    from kernels_pallas.attention import attention_reference

    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (2, 48, 4, 32), jnp.float32).astype(jnp.bfloat16)
    k, v = (jax.random.normal(key, (2, 48, 2, 32), jnp.float32).astype(jnp.bfloat16) for key in ks[1:])
    want = attention_reference(q, k, v, causal=True, sliding_window=10)
    assert not np.allclose(np.asarray(want, np.float32), np.asarray(attention_reference(q, k, v), np.float32),
                           atol=1e-2)
    for impl in ("xla", "pallas"):
        got = ops.attention(q, k, v, causal=True, sliding_window=10, impl=impl)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2)
    monkeypatch.setattr(dispatch, "target_platform", lambda: "gpu")
    real, windows = jax.nn.dot_product_attention, []

    def as_xla(*args, implementation=None, **options):
        windows.append(options["local_window_size"])
        return real(*args, implementation="xla", **options)

    monkeypatch.setattr(jax.nn, "dot_product_attention", as_xla)
    got = ops.attention(q, k, v, causal=True, sliding_window=10, impl="cudnn")
    assert windows == [(9, 0)]  # jax.nn's (left, right): 9 keys before the query, and the query
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=2e-2)
    same = ops.attention(q, k, v, causal=True, sliding_window=48, impl="cudnn")  # as long as the keys: no window
    np.testing.assert_allclose(np.asarray(same, np.float32),
                               np.asarray(attention_reference(q, k, v), np.float32), atol=2e-2)
    with pytest.raises(JaxlmError, match="sliding_window 10 needs causal attention"):
        ops.attention(q, k, v, causal=False, sliding_window=10, impl="xla")


def test_bad_inputs_raise_jaxlm_errors_naming_what_is_supported():
    q = jnp.zeros((1, 16, 6, 64))
    with pytest.raises(JaxlmError, match="not a multiple of 4 kv heads"):
        ops.attention(q, jnp.zeros((1, 16, 4, 64)), jnp.zeros((1, 16, 4, 64)), impl="pallas")
    with pytest.raises(JaxlmError, match="dtypes differ"):
        ops.attention(q, jnp.zeros((1, 16, 2, 64), jnp.bfloat16), jnp.zeros((1, 16, 2, 64), jnp.bfloat16),
                      impl="pallas")
    with pytest.raises(JaxlmError, match=r"head_dim 80 is not supported; supported: \(32, 64, 96, 128\)"):
        ops.attention(jnp.zeros((1, 16, 2, 80)), jnp.zeros((1, 16, 1, 80)), jnp.zeros((1, 16, 1, 80)),
                      impl="pallas")
    with pytest.raises(JaxlmError, match="weight must have shape"):
        ops.rms_norm(jnp.zeros((4, 8)), jnp.ones((6,)), 1e-6, impl="pallas")
    with pytest.raises(JaxlmError, match="needs a GPU target"):
        ops.attention(q, q, q, impl="cudnn")
    with pytest.raises(JaxlmError, match="choose one of auto, xla, pallas, cudnn"):
        ops.rms_norm(jnp.zeros((4, 8)), jnp.ones((8,)), 1e-6, impl="triton")


def test_auto_uses_xla_on_cpu():
    assert ops.resolve_impl("auto", "attention") == "xla"
    assert ops.resolve_impl("auto", "rms_norm") == "xla"
