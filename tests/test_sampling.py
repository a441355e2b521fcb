"""Sampling on crafted distributions: top-k / top-p keep exactly the allowed set, draws never
leave it, frequencies follow the renormalised probabilities, seeds reproduce, bad knobs fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import JaxlmError
from jaxlm.inference.sampling import SamplingParams, allowed_mask, apply_repetition_penalty, next_token, sample

# Probabilities 0.40, 0.25, 0.15, 0.10, 0.06, 0.04 scattered over 8 ids (ids 1 and 6 get probability 0).
PROBS = np.array([0.15, 0.0, 0.40, 0.06, 0.10, 0.25, 0.0, 0.04])
LOGITS = jnp.asarray(np.log(np.where(PROBS > 0, PROBS, 1e-30)), jnp.float32)[None]  # (1, 8)


def allowed(top_k, top_p):
    return set(np.flatnonzero(np.asarray(allowed_mask(LOGITS, jnp.int32(top_k), jnp.float32(top_p)))[0]))


@pytest.mark.parametrize("top_k, top_p, expected", [
    (1, 1.0, {2}),
    (2, 1.0, {2, 5}),
    (3, 1.0, {2, 5, 0}),
    (0, 0.39, {2}),  # the first token alone reaches it
    (0, 0.41, {2, 5}),
    (0, 0.64, {2, 5}),  # 0.40 + 0.25 reaches it
    (0, 0.66, {2, 5, 0}),
    (0, 0.70, {2, 5, 0}),
    (0, 0.95, {2, 5, 0, 4, 3}),
    (0, 1.0, set(range(8))),
    (4, 0.70, {2, 5}),  # top-k first, then renormalised: 0.4/0.9 + 0.25/0.9 = 0.722 >= 0.7
    (0, 1e-6, {2}),  # the most likely token is always kept
])
def test_allowed_set_on_a_crafted_distribution(top_k, top_p, expected):
    assert allowed(top_k, top_p) == expected


def test_top_k_is_exact_under_ties():
    flat = jnp.zeros((2, 10))
    mask = np.asarray(allowed_mask(flat, jnp.int32(3), jnp.float32(1.0)))
    assert mask.sum(axis=1).tolist() == [3, 3]


@pytest.mark.parametrize("top_k, top_p", [(2, 1.0), (0, 0.66), (4, 0.7), (0, 1.0)])
def test_draws_stay_in_the_allowed_set_and_follow_the_renormalised_probabilities(top_k, top_p):
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    draw = jax.jit(jax.vmap(lambda k: sample(LOGITS, k, jnp.float32(1.0), jnp.int32(top_k), jnp.float32(top_p))[0]))
    ids = np.asarray(draw(keys))
    keep = allowed(top_k, top_p)
    assert set(ids.tolist()) <= keep
    p = np.array([PROBS[i] if i in keep else 0.0 for i in range(8)])
    p /= p.sum()
    freq = np.bincount(ids, minlength=8) / n
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / n))  # 4 sigma


def test_temperature_sharpens_and_flattens():
    keys = jax.random.split(jax.random.key(1), 2000)
    rate = {}
    for t in (0.3, 1.0, 3.0):
        draw = jax.jit(jax.vmap(lambda k: sample(LOGITS, k, jnp.float32(t), jnp.int32(0), jnp.float32(1.0))[0]))
        rate[t] = float(np.mean(np.asarray(draw(keys)) == 2))
    assert rate[0.3] > rate[1.0] > rate[3.0]
    assert abs(rate[1.0] - 0.40) < 0.05


def test_same_key_same_tokens():
    logits = jax.random.normal(jax.random.key(3), (4, 50))
    a = sample(logits, jax.random.key(9), jnp.float32(1.0), jnp.int32(10), jnp.float32(0.9))
    b = sample(logits, jax.random.key(9), jnp.float32(1.0), jnp.int32(10), jnp.float32(0.9))
    np.testing.assert_array_equal(a, b)


def test_greedy_takes_the_argmax_within_the_tokenizer_vocab():
    knobs = SamplingParams().as_arrays()
    logits = jnp.array([[0.1, 0.5, 0.2, 9.0], [3.0, 0.5, 0.2, 0.0]])
    seen = jnp.zeros((2, 4), bool)
    tok = next_token(logits, seen, jax.random.key(0), knobs, greedy=True, vocab_limit=jnp.int32(4))
    assert tok.tolist() == [3, 0]
    tok = next_token(logits, seen, jax.random.key(0), knobs, greedy=True, vocab_limit=jnp.int32(3))
    assert tok.tolist() == [1, 0]  # id 3 has no tokenizer piece


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = jnp.array([[2.0, -2.0, 2.0, -2.0]])
    seen = jnp.array([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, jnp.float32(2.0))
    np.testing.assert_allclose(out, [[1.0, -4.0, 2.0, -2.0]])
    knobs = SamplingParams(repetition_penalty=3.0).as_arrays()
    tok = next_token(jnp.array([[2.0, 1.0]]), jnp.array([[True, False]]), jax.random.key(0), knobs, greedy=True,
                     vocab_limit=jnp.int32(2))
    assert tok.tolist() == [1]  # 2/3 < 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_p=0.0), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=1.5), "top_p must be in \\(0, 1\\]"),
    (dict(top_p=-0.2), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=-3), "top_k must be a non-negative integer"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
])
def test_bad_sampling_knobs_raise(kwargs, match):
    with pytest.raises(JaxlmError, match=match):
        SamplingParams(**kwargs)
