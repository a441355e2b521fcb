"""Two local processes form one JAX job (jax.distributed, gloo on CPU): they match a single-process
run, stop together when only one of them is signalled, and resume the same step when their views
of the checkpoint folder differ."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.checkpoint import load_model
from jaxlm.checkpoint.locate import finished_steps
from jaxlm.training.trainer import train

from cli_helpers import xla_flags
from train_helpers import eval_batches, tiny_run_config, token_batches

REPO = Path(__file__).resolve().parents[1]
STEPS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, *overrides: str, **env_extra) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                   XLA_FLAGS=xla_flags(4),
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                   **env_extra)
        cmd = [sys.executable, str(REPO / "tests" / "train_helpers.py"), str(out), str(STEPS), "4,2,1",
               "checkpoint.every=2", *overrides]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=300) -> tuple[list[tuple[dict, tuple[int, str]]], dict]:
    """Wait for both; each one's (losses, (stopped step, reason)), and the validation losses of the last
    (the same on both). A hang fails the test, not the suite."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results, vals = [], []
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
        stopped = stdout.split("STOPPED ")[1].split()
        results.append((json.loads(stdout.split("LOSSES ")[1].splitlines()[0]), (int(stopped[0]), stopped[1])))
        vals.append(json.loads(stdout.split("VAL ")[1].splitlines()[0]))
    assert vals[0] == vals[1]
    return results, vals[0]


def _signal_one_after(procs, out: Path, past: int, which: int, sig) -> None:
    """Send `sig` to process `which` alone once a checkpoint newer than step `past` is finished."""
    deadline = time.time() + 240
    while time.time() < deadline and max(finished_steps(out / "checkpoints"), default=0) <= past:
        assert all(p.poll() is None for p in procs), "a process ended before it was signalled"
        time.sleep(0.02)
    procs[which].send_signal(sig)


def _params(run_dir):
    model = load_model(run_dir)[1]
    return jax.tree.leaves(jax.tree.map(np.asarray, nnx.state(model).to_pure_dict()))


def test_two_processes_stop_together_resume_together_and_match_an_uninterrupted_run(tmp_path):
    # Uninterrupted: each process takes its own slice of every batch (and of every validation batch);
    # the losses are global, so both report the same, and they equal a single process's.
    ((ref, _), (ref1, _)), ref_val = _finish(_start(tmp_path / "ref", "train.eval_every=8"))
    assert ref == ref1 and sorted(map(int, ref)) == list(range(1, STEPS + 1))
    assert sorted(map(int, ref_val)) == [2 * i for i in range(1, STEPS // 2 + 1)]  # each checkpoint, and every 8
    assert finished_steps(tmp_path / "ref" / "checkpoints")[-1] == STEPS
    single = train(tiny_run_config(tmp_path / "single", steps=STEPS, mesh=(4, 2, 1), checkpoint={"every": 0},
                                   eval_every=8), batch_source=token_batches, eval_source=eval_batches, quiet=True)
    for step, loss in single.losses.items():
        assert abs(ref[str(step)] - loss) < 1e-5, (step, ref[str(step)], loss)
    for step, loss in single.val_losses.items():  # 8 and 16: the validation combines both processes' rows
        assert abs(ref_val[str(step)] - loss) < 1e-5, (step, ref_val[str(step)], loss)

    out = tmp_path / "run"
    # SIGTERM to process 1 only: both stop after the same step, save it, and exit 0.
    procs = _start(out, SLOW_BATCHES="0.3")
    _signal_one_after(procs, out, 0, which=1, sig=signal.SIGTERM)
    ((first_losses, first), (_, first1)), _ = _finish(procs)
    assert first == first1 and first[1] == "preempted" and first[0] < STEPS, (first, first1)
    assert finished_steps(out / "checkpoints")[-1] == first[0]
    # The same with Ctrl-C (SIGINT) to process 0 only.
    procs = _start(out, SLOW_BATCHES="0.3")
    _signal_one_after(procs, out, first[0], which=0, sig=signal.SIGINT)
    ((second_losses, second), (_, second1)), _ = _finish(procs)
    assert second == second1 and second[1] == "preempted" and first[0] < second[0] < STEPS, (first, second, second1)
    assert min(map(int, second_losses)) == first[0] + 1  # resumed where the first leg stopped
    # Process 1's listing misses the newest checkpoint: both still resume process 0's step and finish.
    ((last, done), (last1, done1)), _ = _finish(_start(out, HIDE_NEWEST_ON="1"))
    assert done == done1 == (STEPS, "finished")
    assert last == last1 and sorted(map(int, last)) == list(range(second[0] + 1, STEPS + 1))
    for s, loss in {**first_losses, **second_losses, **last}.items():
        assert loss == ref[s], s  # bitwise, step by step
    got, want = _params(out), _params(tmp_path / "ref")
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
