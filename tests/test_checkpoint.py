"""Run checkpoints: restore onto other meshes, bad checkpoints fail clearly and overwrite nothing."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.checkpoint import load_model
from jaxlm.errors import JaxlmError
from jaxlm.training.trainer import train

from train_helpers import tiny_run_config, token_batches


def _leaves(tree):
    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def run_222(tmp_path_factory):
    """A 3-step run on a (2, 2, 2) mesh with a checkpoint at steps 2 and 3."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    result = train(tiny_run_config(out, steps=3, mesh=(2, 2, 2)), batch_source=token_batches, quiet=True)
    return out, result


def test_restore_on_other_meshes_gives_identical_params(run_222):
    out, result = run_222
    saved = _leaves(result.params)
    # One device, continuing training from the (2, 2, 2) checkpoint's step 3.
    one = train(tiny_run_config(out, steps=3, mesh=(1, 1, 1)), batch_source=token_batches, quiet=True,
                devices=jax.devices()[:1])
    assert one.step == 3 and {len(x.sharding.device_set) for x in jax.tree.leaves(one.params)} == {1}
    for a, b in zip(saved, _leaves(one.params)):
        np.testing.assert_array_equal(a, b)
    four = train(tiny_run_config(out, steps=3, mesh=(4, 1, 1)), batch_source=token_batches, quiet=True,
                 devices=jax.devices()[:4])
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(four.params)} == {4}
    for a, b in zip(saved, _leaves(four.params)):
        np.testing.assert_array_equal(a, b)
    # load_model reads a run dir (latest step) and one step folder.
    _, model = load_model(out)
    np.testing.assert_array_equal(np.asarray(model.embed[...]), saved[jax.tree.leaves(result.params).index(
        result.params["embed"])])
    _, model2 = load_model(out / "checkpoints" / "2")
    assert not np.array_equal(np.asarray(model2.embed[...]), np.asarray(model.embed[...]))


def test_checkpoint_from_other_model_config_names_the_shapes(run_222):
    out, _ = run_222
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    cfg = tiny_run_config(out, steps=4, mesh=(2, 2, 2))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ffn_dim=96))
    with pytest.raises(JaxlmError, match=r"different model config: .*ffn/w_in: checkpoint \(2, 64, 2, 128\) vs "
                                         r"config \(2, 64, 2, 96\)"):
        train(cfg, batch_source=token_batches, quiet=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_missing_and_corrupt_checkpoints_are_clear_errors(run_222, tmp_path):
    out, _ = run_222
    with pytest.raises(JaxlmError, match="does not exist"):
        load_model(tmp_path / "nope")
    cfg = tiny_run_config(tmp_path / "new", init_from=str(tmp_path / "nope"))
    with pytest.raises(JaxlmError, match="does not exist"):
        train(cfg, batch_source=token_batches, quiet=True)
    assert not (tmp_path / "new" / "config.yaml").exists()
    # Corrupt the latest step of a copy: its params metadata is gone.
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = bad / "checkpoints" / "3" / "params"
    for f in victim.iterdir():
        if f.is_file():
            f.unlink()
    with pytest.raises(JaxlmError, match=r"checkpoint step 3 .* is corrupt or incomplete"):
        load_model(bad)
    # Resuming falls back to the newest step that loads (2) and keeps the damaged one aside.
    result = train(tiny_run_config(bad, steps=4), batch_source=token_batches, quiet=True)
    assert result.step == 4 and min(result.losses) == 3
    assert (bad / "checkpoints" / "3.corrupt" / "params").is_dir() and (bad / "checkpoints" / "4").is_dir()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", steps=6, lr=1e30, warmup_steps=0, clip_norm=0.0,
                          checkpoint={"every": 1})
    with pytest.raises(JaxlmError, match=r"non-finite at step (\d+).*last good checkpoint is step") as e:
        train(cfg, batch_source=token_batches, quiet=True)
    bad_step = int(e.value.args[0].split("at step ")[1].split()[0])
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) < bad_step
    _, model = load_model(tmp_path / "run")
    assert np.isfinite(np.asarray(model.embed[...])).all()
