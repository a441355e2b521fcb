"""Multi-host start-up and small cross-process helpers.

`maybe_initialize()` calls jax.distributed.initialize when the environment says the job spans
several processes:
  - JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES, JAX_PROCESS_ID: explicit (GPU clusters,
    local multi-process tests);
  - JAXLM_DISTRIBUTED=auto: let JAX detect the cluster (TPU pod slices, SLURM, Open MPI).
On CPU the gloo collectives are selected so processes can all-reduce.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_initialized = False


def maybe_initialize() -> bool:
    """Initialise jax.distributed if the environment asks for it; True when the job is multi-process."""
    global _initialized
    if _initialized:
        return True
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if addr:
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(addr, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        _initialized = True
    elif os.environ.get("JAXLM_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        _initialized = True
    return _initialized


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def broadcast_json(obj):
    """Process 0's JSON-serialisable `obj`, on every process (one decision for all: e.g. the step to resume)."""
    if jax.process_count() == 1:
        return obj
    raw = _json_bytes(obj)
    n = int(multihost_utils.broadcast_one_to_all(np.array([raw.size], np.int32))[0])
    padded = np.zeros(n, np.uint8)
    padded[:min(n, raw.size)] = raw[:n]
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode())


@functools.cache
def _max_over_processes():
    mesh = Mesh(np.array(jax.devices()), ("all",))
    fn = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    return NamedSharding(mesh, P("all")), fn


def max_over_processes_async(value: int) -> jax.Array:
    """Start the max over processes of each one's int `value`; a replicated scalar, read when needed.

    A collective: every process must call it the same number of times. It is dispatched like a train
    step, so reading it blocks only until it has run, not the caller until the others arrive.
    """
    sharding, fn = _max_over_processes()
    local = np.full((len(jax.local_devices()),), value, np.int32)
    return fn(jax.make_array_from_process_local_data(sharding, local))


def allgather_json(obj) -> list:
    """Every process's JSON-serialisable `obj`, in process order (e.g. each one's data-iterator state)."""
    if jax.process_count() == 1:
        return [obj]
    raw = _json_bytes(obj)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(r[:int(n)]).decode()) for r, n in zip(np.asarray(rows), np.asarray(lengths).reshape(-1))]
