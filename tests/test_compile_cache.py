"""The run's persistent compilation cache: a restarted run loads its compiled train step from the run
dir; "off", an explicit directory and JAX_COMPILATION_CACHE_DIR are honoured, and JAX's setting is
put back after the run."""

import dataclasses
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from jaxlm.errors import ConfigError
from jaxlm.training import compile_cache
from jaxlm.training.trainer import train

from train_helpers import tiny_run_config, token_batches


@pytest.fixture
def cache_everything():
    """No session-wide cache (conftest sets one for speed), and every program stored (the tiny step
    compiles in under JAX's 1 s default threshold)."""
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    jax_cache.reset_cache()  # the next test's first compile sets the cache up from the restored setting


def _compile_line(text: str) -> str:
    return next(line for line in text.splitlines() if "step compiled in" in line)


def test_a_restarted_run_loads_its_step_from_the_run_dir_and_jax_is_left_as_it_was(tmp_path, capsys,
                                                                                   cache_everything):
    before = jax.config.jax_compilation_cache_dir
    out = tmp_path / "run"
    cfg = tiny_run_config(out, steps=4, checkpoint={"every": 1})
    preempted = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_after=2))
    train(preempted, batch_source=token_batches)
    assert "compile cache" not in _compile_line(capsys.readouterr().out)  # nothing to load yet
    assert any((out / compile_cache.DIR_NAME).iterdir())
    assert jax.config.jax_compilation_cache_dir == before

    jax.clear_caches()  # as a new process: nothing compiled in memory
    resumed = train(cfg, batch_source=token_batches)
    line = _compile_line(capsys.readouterr().out)
    assert f"(from the compile cache {out / compile_cache.DIR_NAME})" in line and "resumed at step 2" in line
    assert sorted(resumed.losses) == [3, 4]
    assert jax.config.jax_compilation_cache_dir == before
    # The loaded executable continues the run exactly: an uninterrupted run compiled afresh agrees.
    jax.clear_caches()
    ref = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / "ref"),
                                                                   compile_cache="off")),
                batch_source=token_batches, quiet=True)
    assert [resumed.losses[s] for s in (3, 4)] == [ref.losses[s] for s in (3, 4)]


def test_off_writes_no_cache_and_an_explicit_directory_is_used(tmp_path, cache_everything):
    off = tiny_run_config(tmp_path / "off", steps=1, checkpoint={"every": 0}, compile_cache="off")
    train(off, batch_source=token_batches, quiet=True)
    assert not (tmp_path / "off" / compile_cache.DIR_NAME).exists()

    jax.clear_caches()
    shared = tmp_path / "shared_cache"
    mine = tiny_run_config(tmp_path / "mine", steps=1, checkpoint={"every": 0}, compile_cache=str(shared))
    train(mine, batch_source=token_batches, quiet=True)
    assert any(shared.iterdir()) and not (tmp_path / "mine" / compile_cache.DIR_NAME).exists()


def test_auto_defers_to_a_directory_jax_already_has_and_off_suspends_it(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert compile_cache.resolve("auto", tmp_path) == str(tmp_path / compile_cache.DIR_NAME)
        assert compile_cache.resolve("off", tmp_path) is None
        assert compile_cache.resolve("/somewhere", tmp_path) == "/somewhere"

        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))  # e.g. JAX_COMPILATION_CACHE_DIR
        assert compile_cache.resolve("auto", tmp_path / "run") == str(tmp_path / "users")
        with compile_cache.active("off", tmp_path / "run") as use:
            assert use.directory is None and jax.config.jax_compilation_cache_dir is None
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "users")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_yaml_off_and_on_read_as_settings_and_an_empty_one_is_a_config_error(tmp_path):
    assert tiny_run_config(tmp_path, compile_cache=False).train.compile_cache == "off"  # YAML `off`
    assert tiny_run_config(tmp_path, compile_cache=True).train.compile_cache == "auto"
    with pytest.raises(ConfigError, match="train.compile_cache is empty"):
        tiny_run_config(tmp_path, compile_cache=" ")



@pytest.mark.parametrize("wrote_files", [False, True])
def test_the_cache_of_a_run_that_wrote_nothing_else_is_removed_with_it(tmp_path, cache_everything, wrote_files):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(RuntimeError):
        with compile_cache.active("auto", out) as use:  # as train(): the step is stored, then something fails
            Path(use.directory).mkdir()
            (Path(use.directory) / "entry").write_text("compiled")
            if wrote_files:
                (out / "config.yaml").write_text("written")
            raise RuntimeError("failed after the compile")
    assert (out / compile_cache.DIR_NAME).exists() == wrote_files
