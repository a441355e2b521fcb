"""Accelerator topologies as devices to build a mesh on, without the accelerator: libtpu's topology
description for TPU slices ("v5e:2x4"), JAX's CUDA plugin for NVIDIA nodes ("h100:1x1x8", `jaxlm.aot.gpu`)."""

from __future__ import annotations

import os

import jax
from jax.experimental import topologies

from jaxlm.aot.gpu import gpu_devices, gpu_memory_bytes, is_gpu_topology
from jaxlm.aot.stderr import filtered_stderr
from jaxlm.errors import JaxlmError

# Per-chip HBM that the TPU compiler lets a program use (libtpu's "available HBM" in its
# RESOURCE_EXHAUSTED message; slightly under the marketed size), by `device_kind`.
CHIP_HBM_GIB: dict[str, float] = {
    "TPU v4": 15.25,  # per TensorCore: libtpu shows a v4 chip as two devices
    "TPU v5 lite": 15.75,  # v5e
    "TPU v5": 95.74,  # v5p
    "TPU v6 lite": 31.25,  # v6e
}


def topology_devices(name: str) -> list:
    """The devices of a topology such as "v5e:2x4", "v5p:2x2x1" or "h100:1x1x8" (compile-only: they cannot run)."""
    if is_gpu_topology(name):
        return gpu_devices(name)
    try:
        import libtpu  # noqa: F401  (lazy: the optional tpu extra; only to tell a missing install from a bad name)
    except ImportError:
        raise JaxlmError("compiling for a TPU topology needs libtpu; install the extra: "
                         "pip install 'jaxlm[tpu]' (it pins jax[tpu] to the installed jax)") from None
    # libtpu probes for TPU hosts at start-up; on a host without one these keep it quiet. Compiling
    # touches no chip, so several processes may load libtpu at once (it takes a lock file otherwise).
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

    # A compile-only executable has no client to be reloaded into: a persistent compilation cache
    # (JAX_COMPILATION_CACHE_DIR) would store it and then warn on every later read. The compile is
    # what is being measured here anyway.
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        with filtered_stderr(drop=lambda line: True):  # libtpu's start-up warnings about the missing TPU host
            return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu raises XlaRuntimeError / ValueError for an unknown topology
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "INVALID_ARGUMENT" not in first and "Invalid" not in first:
            raise JaxlmError(f"libtpu could not describe topology {name!r}: {first}") from None
        raise JaxlmError(f"unknown TPU topology {name!r} ({first}); give CHIP:SHAPE, e.g. v5e:2x2, v5e:2x4, "
                         f"v5p:2x2x1, v4:2x2x1, v6e:2x2, or a GPU node such as h100:1x1x8") from None


def chip_hbm_bytes(device) -> int | None:
    """Usable HBM per chip for a device kind (None when unknown). A GPU's is what JAX's allocator takes."""
    if device.platform == "gpu":
        return gpu_memory_bytes(device)
    gib = CHIP_HBM_GIB.get(getattr(device, "device_kind", ""))
    return None if gib is None else int(gib * 2 ** 30)
