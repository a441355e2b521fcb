"""The preference losses against TRL's own code, for given log-probs: DPO's sigmoid loss (with cDPO label
smoothing) and SimPO's, their gradients with respect to the policy log-probs, and the reward metrics.
TRL's CPOTrainer.cpo_loss is a pure function of log-probs: fed the log-ratios to the reference it is
DPO's loss; fed mean log-probs with loss_type="simpo" it is SimPO's."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.training.objectives import preference_loss

torch = pytest.importorskip("torch")
cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")


def trl_loss(policy_chosen, policy_rejected, beta, label_smoothing, loss_type="sigmoid", simpo_gamma=0.5):
    """TRL's mean loss and its gradient with respect to (policy_chosen, policy_rejected)."""
    trainer = types.SimpleNamespace(alpha=0.0, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
                                    simpo_gamma=simpo_gamma, accelerator=types.SimpleNamespace(device="cpu"))
    chosen = torch.tensor(policy_chosen, dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor(policy_rejected, dtype=torch.float64, requires_grad=True)
    losses, chosen_rewards, rejected_rewards = cpo.CPOTrainer.cpo_loss(trainer, chosen, rejected)
    loss = losses.mean()
    loss.backward()
    return loss.item(), chosen.grad.numpy(), rejected.grad.numpy(), chosen_rewards.numpy(), rejected_rewards.numpy()


@pytest.fixture(scope="module")
def logps():
    rng = np.random.default_rng(0)
    return {k: -rng.uniform(5, 60, size=16) for k in ("chosen", "rejected", "ref_chosen", "ref_rejected")}


@pytest.mark.parametrize("beta,label_smoothing", [(0.1, 0.0), (0.5, 0.2), (2.0, 0.0)])
def test_dpo_loss_and_gradient_equal_trl(logps, beta, label_smoothing):
    jax.config.update("jax_enable_x64", True)
    try:
        def ours(chosen, rejected):
            return jnp.mean(preference_loss(chosen - logps["ref_chosen"], rejected - logps["ref_rejected"], beta,
                                            label_smoothing))

        loss, grads = jax.value_and_grad(ours, argnums=(0, 1))(jnp.asarray(logps["chosen"]),
                                                               jnp.asarray(logps["rejected"]))
    finally:
        jax.config.update("jax_enable_x64", False)
    ref_loss, ref_chosen_grad, ref_rejected_grad, _, _ = trl_loss(
        logps["chosen"] - logps["ref_chosen"], logps["rejected"] - logps["ref_rejected"], beta, label_smoothing)
    assert abs(float(loss) - ref_loss) < 1e-6 and ref_loss > 0
    np.testing.assert_allclose(np.asarray(grads[0]), ref_chosen_grad, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[1]), ref_rejected_grad, atol=1e-6)
    assert np.abs(ref_chosen_grad).max() > 1e-4  # a gradient that could have differed


def test_float32_dpo_loss_within_1e6_of_trl(logps):
    """The step's own precision (float32) against TRL in float64."""
    chosen, rejected = (jnp.asarray(logps[k] - logps["ref_" + k], jnp.float32) for k in ("chosen", "rejected"))
    ours = float(jnp.mean(preference_loss(chosen, rejected, 0.1, 0.1)))
    assert abs(ours - trl_loss(logps["chosen"] - logps["ref_chosen"], logps["rejected"] - logps["ref_rejected"],
                               0.1, 0.1)[0]) < 1e-6


def test_simpo_loss_and_rewards_equal_trl(logps):
    beta, gamma = 2.0, 0.5
    lengths = np.arange(16) + 5.0
    chosen, rejected = logps["chosen"] / lengths, logps["rejected"] / (lengths + 3)
    ours = jax.value_and_grad(lambda c: jnp.mean(preference_loss(c - gamma / beta, jnp.asarray(rejected), beta)))(
        jnp.asarray(chosen, jnp.float32))
    ref_loss, ref_grad, _, ref_chosen_rewards, ref_rejected_rewards = trl_loss(chosen, rejected, beta,
                                                                               0.0, "simpo", gamma)
    assert abs(float(ours[0]) - ref_loss) < 1e-6
    np.testing.assert_allclose(np.asarray(ours[1]), ref_grad, atol=1e-6)
    np.testing.assert_allclose(beta * chosen, ref_chosen_rewards, rtol=1e-12)  # rewards: beta * mean log-prob


def test_keep_best_ranks_preference_runs_by_reward_accuracy():
    from jaxlm.training.validation import rank_value

    assert rank_value({"val_loss": 2.5, "val_ppl": 12.2}) == 2.5
    better, worse = ({"val_loss": 0.7, "val_rewards/accuracies": a} for a in (0.8, 0.6))
    assert rank_value(better) < rank_value(worse)  # keep_best keeps the lowest
