"""One trainer per run directory (jaxlm/training/run_lock.py): a second one exits 2 naming the first,
a lock left by a dead trainer is taken over, and a run that fails before writing leaves no folder."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jaxlm.checkpoint.locate import finished_steps
from jaxlm.errors import JaxlmError
from jaxlm.training.run_lock import LOCK_NAME, RunLock

from cli_helpers import cli_env, jaxlm, tiny_run_yaml, xla_flags

REPO = Path(__file__).resolve().parents[1]


def test_a_held_lock_refuses_a_second_holder_and_is_gone_after_release(tmp_path):
    lock = RunLock.acquire(tmp_path / "run")
    record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and lock.stale is None
    with pytest.raises(JaxlmError, match=f"in use by PID {os.getpid()} on {socket.gethostname()}"):
        RunLock.acquire(tmp_path / "run")  # its own open file: flock refuses it as it would another process
    lock.release()
    assert not (tmp_path / "run").exists()  # made by the lock, nothing else written: removed with it
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x")
    RunLock.acquire(tmp_path / "run").release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]  # an existing run dir stays


def test_a_dead_trainers_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "earlier"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))  # left by a trainer killed with -9: no flock held
    lock = RunLock.acquire(tmp_path)
    assert lock.stale == record
    lock.release()


@pytest.mark.slow  # covered: the lock unit tests above; the README test runs jaxlm train
def test_a_second_trainer_on_a_run_in_use_exits_2_and_the_first_finishes_untouched(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", SLOW_BATCHES="0.3",
               XLA_FLAGS=xla_flags(1))
    first = subprocess.Popen([sys.executable, str(REPO / "tests" / "train_helpers.py"), str(out), "60", "1,1,1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not finished_steps(out / "checkpoints") and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = jaxlm("train", tiny_run_yaml(tmp_path / "second.yaml", out, steps=3, lr=3e-3), env=cli_env())
        assert first.poll() is None  # the second ended while the first still ran
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert f"in use by PID {first.pid} on {socket.gethostname()}" in second.stderr
    assert first.returncode == 0, stderr[-2000:]
    assert stdout.split("STOPPED ")[1].split() == ["60", "finished"]
    assert sorted(map(int, json.loads(stdout.split("LOSSES ")[1].splitlines()[0]))) == list(range(1, 61))
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 1e-2  # the first's config
    assert finished_steps(out / "checkpoints")[-1] == 60 and not (out / LOCK_NAME).exists()
