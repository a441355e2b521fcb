"""kill -9 at random moments (some during a save), SIGTERM, Ctrl-C and a second Ctrl-C mid-save, then
resume: the final parameters equal an uninterrupted run's."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.checkpoint import load_model
from jaxlm.checkpoint.locate import finished_steps

from cli_helpers import xla_flags

REPO = Path(__file__).resolve().parents[1]
STEPS = 20


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(1),
               # Restarts reuse the compiled step (same executable, so the same numbers).
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _start(out, env):
    cmd = [sys.executable, str(REPO / "tests" / "train_helpers.py"), str(out), str(STEPS), "1,1,1",
           "checkpoint.every=1", "checkpoint.keep=2"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saving(ckpt_dir: Path) -> bool:
    return ckpt_dir.is_dir() and any("tmp" in p.name for p in ckpt_dir.iterdir())


def _interrupt(out: Path, env, how: str, rng: random.Random):
    """Start the run, interrupt it (kill -9 mid-save, kill -9 at a random moment, SIGTERM, SIGINT, or
    SIGINT twice mid-save).

    Returns (returncode, whether a save was in flight when the signal went out, stderr)."""
    ckpt = out / "checkpoints"
    before = max(finished_steps(ckpt), default=0)
    proc = _start(out, env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        progressed = max(finished_steps(ckpt), default=0) > before
        if how in ("kill_during_save", "sigint_twice") and progressed and _saving(ckpt):
            break
        if how not in ("kill_during_save", "sigint_twice") and progressed:
            time.sleep(rng.uniform(0.0, 0.5))
            break
        time.sleep(0.005)
    saving = _saving(ckpt)
    if proc.poll() is None:
        proc.send_signal({"sigterm": signal.SIGTERM, "sigint": signal.SIGINT,
                          "sigint_twice": signal.SIGINT}.get(how, signal.SIGKILL))
    if how == "sigint_twice":
        time.sleep(0.05)  # the first is handled (the run is finishing its save), then Ctrl-C again
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, saving, stderr


def test_kill9_sigterm_and_ctrl_c_then_resume_matches_uninterrupted_run(tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "run"
    rng = random.Random(1234)
    hows = ("kill_during_save", "kill_random", "sigterm", "sigint", "sigint_twice")
    runs = [_interrupt(out, env, how, rng) for how in hows]
    assert any(code == -signal.SIGKILL and saving for code, saving, _ in runs[:2])  # killed mid-save at least once
    assert runs[1][0] == -signal.SIGKILL
    for code, _, stderr in runs[2:4]:
        assert code == 0, stderr[-2000:]  # SIGTERM, Ctrl-C: saved and exited cleanly
    code, saving, stderr = runs[4]
    assert code == 130 and saving, (code, saving, stderr[-2000:])  # Ctrl-C twice: out at once, mid-save
    assert stderr.strip().splitlines()[-1].startswith("jaxlm train: interrupted twice: stopped at once without saving")
    final = _start(out, env)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr[-2000:]
    resumed_losses = json.loads(stdout.split("LOSSES ")[1].splitlines()[0])
    # No checkpoint left on disk is corrupt: every finished step loads.
    steps = finished_steps(out / "checkpoints")
    assert steps[-1] == STEPS and not _saving(out / "checkpoints")
    for s in steps:
        load_model(out / "checkpoints" / str(s))
    # The uninterrupted reference: the same command, never interrupted.
    ref = _start(tmp_path / "ref", env)
    ref_stdout, ref_stderr = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_stderr[-2000:]
    ref_losses = json.loads(ref_stdout.split("LOSSES ")[1].splitlines()[0])
    _, got, want = load_model(out), load_model(out)[1], load_model(tmp_path / "ref")[1]
    got, want = (jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())) for m in (got, want))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)  # bitwise
    for s, loss in resumed_losses.items():  # the steps the last process ran
        assert loss == ref_losses[s]
