"""The output head: the chunked loss equals the full loss in value and gradient (z-loss, mask, tied
and untied embeddings, float32 and bfloat16 compute), the projection accumulates in float32, the
chunked loss holds no (B, T, V) logits, and prefill projects only the sampled positions.
Gradient tolerance (kernel_helpers): max |chunked - full| / max(1, max |full|) <= 1e-5 in float32,
<= 2e-2 in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.inference import engine as engine_lib
from jaxlm.model import ModelConfig, build_model
from jaxlm.model.transformer import project_logits
from jaxlm.training.loss import chunked_loss_sums, loss_sums

from kernel_helpers import assert_close

Z_LOSS = 1e-2  # large enough that the z term moves the gradient visibly


def _model(tie: bool, compute_dtype: str = "float32"):
    cfg = ModelConfig(vocab_size=211, model_dim=32, num_layers=2, head_dim=16, num_query_heads=2, num_kv_heads=1,
                      ffn_dim=64, tie_embeddings=tie, compute_dtype=compute_dtype, max_context=64)
    return build_model(cfg, seed=0)


def _batch(b=2, t=37, vocab=211):
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, vocab)
    targets = jax.random.randint(jax.random.key(2), (b, t), 0, vocab)
    mask = (jax.random.uniform(jax.random.key(3), (b, t)) > 0.3).astype(jnp.float32)
    return tokens, targets, mask


def _loss_and_grads(model, chunk):
    """Loss sums and d total / d params: full logits (chunk None) or chunked."""
    graphdef, params = nnx.split(model)
    tokens, targets, mask = _batch()

    def total(params):
        m = nnx.merge(graphdef, params)
        if chunk is None:
            sums = loss_sums(m(tokens), targets, mask, Z_LOSS)
        else:
            sums = chunked_loss_sums(m.hidden_states(tokens), m.output_head(), targets, mask, Z_LOSS, chunk)
        return sums["total"], sums

    grads, sums = jax.jit(jax.grad(total, has_aux=True))(params)
    return sums, grads


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("chunk", [8, 37, 512])  # 37 = 4 chunks + padding, one chunk, one chunk (padded)
def test_chunked_loss_equals_full_loss_in_value_and_gradient(tie, chunk):
    model = _model(tie)
    full, full_grads = _loss_and_grads(model, None)
    chunked, grads = _loss_and_grads(model, chunk)
    for k in ("total", "ce", "z", "tokens"):
        np.testing.assert_allclose(chunked[k], full[k], rtol=1e-6, err_msg=k)
    assert float(full["z"]) > 0 and float(full["tokens"]) < 2 * 37  # z-loss and the mask take part
    flat, flat_full = nnx.to_flat_state(grads), nnx.to_flat_state(full_grads)
    assert ("lm_head" in str([p for p, _ in flat])) == (not tie)
    for (path, g), (_, r) in zip(flat, flat_full):
        assert_close(g[...], r[...], jnp.float32, str(path))


def test_chunked_loss_in_bfloat16_equals_full_loss():
    """bf16 compute: both project in bf16 with f32 accumulation; only the summation order differs."""
    model = _model(tie=True, compute_dtype="bfloat16")
    (full, full_grads), (chunked, grads) = _loss_and_grads(model, None), _loss_and_grads(model, 8)
    np.testing.assert_allclose(chunked["total"], full["total"], rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads)):
        assert_close(g, r, jnp.bfloat16)


def test_projection_accumulates_in_float32():
    """bf16 inputs, f32 accumulator kept: equal to the f32 product of the bf16-rounded operands,
    and finer than bf16 (the old head rounded to bf16 and upcast)."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 64)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (64, 300))
    logits = project_logits(x, "btd,dv->btv", w)
    assert logits.dtype == jnp.float32
    exact = jnp.einsum("btd,dv->btv", x.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(logits, exact, rtol=1e-5, atol=1e-5)
    assert jnp.mean(logits != logits.astype(jnp.bfloat16).astype(jnp.float32)) > 0.9


def _loss_grad_temp_bytes(chunk, b=2, t=1024, d=64, vocab=8192):
    """Temporaries of the compiled gradient of the loss from hidden states (CPU backend)."""
    hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    weight = jax.ShapeDtypeStruct((vocab, d), jnp.float32)
    targets = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def total(hidden, weight, targets):
        mask = jnp.ones(targets.shape, jnp.float32)
        if chunk is None:
            return loss_sums(project_logits(hidden, "btd,vd->btv", weight), targets, mask, Z_LOSS)["total"]
        return chunked_loss_sums(hidden, ("btd,vd->btv", weight), targets, mask, Z_LOSS, chunk)["total"]

    compiled = jax.jit(jax.grad(total, argnums=(0, 1))).lower(hidden, weight, targets).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_holds_no_full_logits():
    """(2, 1024, 8192) f32 logits are 64 MiB; the chunked gradient (128 positions per chunk) needs
    less than one such array of temporaries in all, the full one several."""
    logits_bytes = 2 * 1024 * 8192 * 4
    assert _loss_grad_temp_bytes(None) > 2 * logits_bytes
    assert _loss_grad_temp_bytes(128) < logits_bytes / 2


def test_prefill_projects_only_the_last_real_token_of_each_row():
    """No (B, T, V) array in the prefill program; its first token equals the full model's argmax."""
    model = _model(tie=False)
    cfg = model.cfg
    graphdef, state = nnx.split(model)
    b, t = 3, 32
    tokens = jax.random.randint(jax.random.key(4), (b, t), 0, cfg.vocab_size)
    lengths = jnp.array([5, 32, 17], jnp.int32)
    knobs = engine_lib.SamplingParams().as_arrays()
    sampler = engine_lib.Sampler(jnp.full((b, 1), -1, jnp.int32), knobs, jax.random.key(0),
                                 jnp.int32(cfg.vocab_size))
    args = (graphdef, state, tokens, lengths, sampler)
    options = engine_lib.DecodeOptions(cache_len=48, cache_dtype="float32", greedy=True)
    jaxpr = jax.make_jaxpr(lambda *a: engine_lib.prefill(*a, options), static_argnums=0)(*args)
    shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
    assert (b, t, cfg.vocab_size) not in shapes and (b, 1, cfg.vocab_size) in shapes
    first, _ = engine_lib.prefill(*args, options)
    full = model(tokens)[jnp.arange(b), lengths - 1]
    np.testing.assert_array_equal(first, jnp.argmax(full, axis=-1))
