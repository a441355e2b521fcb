"""Two local processes form one JAX job (jax.distributed, gloo on CPU) and match a single-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from train_helpers import tiny_run_config, token_batches

from jaxlm.checkpoint.locate import finished_steps
from jaxlm.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process_losses(tmp_path):
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        cmd = [sys.executable, str(REPO / "tests" / "train_helpers.py"), str(tmp_path / "multi"), "4", "4,2,1",
               "checkpoint.every=2"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    # Each process takes its own slice of every batch; the losses are global, so both print the same.
    losses = [json.loads(o.split("LOSSES ")[1]) for o, _ in outs]
    assert losses[0] == losses[1] and sorted(map(int, losses[0])) == [1, 2, 3, 4]
    assert finished_steps(tmp_path / "multi" / "checkpoints") == [2, 4]
    single = train(tiny_run_config(tmp_path / "single", steps=4, mesh=(4, 2, 1), checkpoint={"every": 0}),
                   batch_source=token_batches, quiet=True)
    for step, loss in single.losses.items():
        assert abs(losses[0][str(step)] - loss) < 1e-5, (step, losses[0][str(step)], loss)
