"""jaxlm.host_malloc: XLA:CPU's large scratch blocks are reused between executions, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from jaxlm import host_malloc
from jaxlm.cli import common
from tests.cli_helpers import cli_env

# A program with a 100 MB block of temporaries (a 5000 x 5000 float32 matrix), run fifteen times after
# warm-up; prints the median memory faulted in per execution (the heap settles after a few runs). `tune()`
# runs before JAX starts, as the CLI does it.
PROGRAM = """
import resource, statistics
from jaxlm import host_malloc
print("tuned", host_malloc.tune())
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.exp(x[:, None] - x[None, :]) @ x)
x = jnp.ones(5000)
for _ in range(6):
    f(x).block_until_ready()
faulted = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faulted.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * 4096 / 2**20)
print("faulted_mb", statistics.median(faulted), faulted)
"""


def _faulted_mb(**env) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=cli_env(**env), capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return out[out.index("tuned") + 1] == "True", float(out[out.index("faulted_mb") + 1])


@pytest.mark.skipif(host_malloc.skip_reason() not in (None, "a GPU or TPU device is present"),
                    reason="needs Linux with glibc and an untuned malloc")
def test_tuned_malloc_stops_refaulting_the_scratch_block():
    tuned, tuned_mb = _faulted_mb(JAXLM_MALLOC_TUNING="1")
    untuned, untuned_mb = _faulted_mb(JAXLM_MALLOC_TUNING="0")
    assert tuned and not untuned
    # untuned: the 95 MB scratch block is mapped afresh on every call; tuned: reused (measured 0 MB)
    assert untuned_mb > 80, untuned_mb
    assert tuned_mb < untuned_mb / 4, (tuned_mb, untuned_mb)


@pytest.mark.parametrize("env, reason", [
    ({"JAXLM_MALLOC_TUNING": "0"}, "JAXLM_MALLOC_TUNING=0"),
    ({"JAX_PLATFORMS": "tpu"}, "JAX_PLATFORMS=tpu selects an accelerator"),
    ({"JAX_PLATFORMS": "cuda,cpu"}, "JAX_PLATFORMS=cuda,cpu selects an accelerator"),
    ({"MALLOC_ARENA_MAX": "4"}, "malloc is tuned by the environment already"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "malloc is tuned by the environment already"),
])
def test_tuning_steps_aside(monkeypatch, env, reason):
    monkeypatch.setattr(host_malloc.platform, "system", lambda: "Linux")
    monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert host_malloc.skip_reason() == reason
    monkeypatch.setattr(host_malloc, "_applied", False)
    assert host_malloc.tune() is False


def test_cli_tunes_before_the_backend_starts(monkeypatch):
    calls = []
    monkeypatch.setattr(host_malloc, "tune", lambda: calls.append("tune"))
    monkeypatch.setattr(jax, "devices", lambda: calls.append("devices"))
    common.start_backend()
    assert calls == ["tune", "devices"]
