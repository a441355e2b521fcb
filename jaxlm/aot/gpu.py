"""NVIDIA GPUs as devices to build a mesh on, without a GPU: XLA's GPU compiler from a device description.

JAX's CUDA plugin (the gpu-aot extra) describes a GPU node from a `GpuTargetConfigProto` in text
form: SM count, shared memory, registers, memory size. The descriptions ship in
`jaxlm/assets/gpu/<chip>.txtpb`. `lower(...).compile()` on a mesh of those devices runs the real
GPU compiler: XLA's fusions, the Triton compiler and ptxas for the kernels, cuDNN's custom calls.
Nothing runs: the devices are compile-only.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from importlib import resources

import jax
from jax.experimental import topologies

from jaxlm.errors import JaxlmError

GPUS = ("a100", "h100", "h200", "b200")
# JAX's GPU allocator takes this fraction of device memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says
# otherwise (https://docs.jax.dev/en/latest/gpu_memory_allocation.html): what a program may use.
JAX_MEM_FRACTION = 0.75
_SHAPE = re.compile(r"[1-9]\d*x[1-9]\d*x[1-9]\d*")


def is_gpu_topology(name: str) -> bool:
    return name.partition(":")[0].lower() in GPUS


def gpu_devices(name: str) -> list:
    """The compile-only devices of "h100:1x1x8" (slices x hosts per slice x GPUs per host)."""
    chip, _, shape = name.lower().partition(":")
    if not _SHAPE.fullmatch(shape):
        raise JaxlmError(f"GPU topology {name!r}: give CHIP:SLICESxHOSTSxGPUS, e.g. {chip}:1x1x8 (one 8-GPU "
                         f"host) or {chip}:1x1x1 (one GPU)")
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
        raise JaxlmError("compiling for a GPU needs JAX's CUDA plugin; install the extra: pip install "
                         "'jaxlm[gpu-aot]' (it pins jax[cuda12] to the installed jax)")
    jax.config.update("jax_enable_compilation_cache", False)  # compile-only executables cannot be cached
    try:
        return list(topologies.get_topology_desc(chip, "cuda", target_config=_target_config(chip),
                                                 topology=shape).devices)
    except Exception as e:  # JaxRuntimeError from the plugin
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "not implemented for cuda" in first:
            raise JaxlmError(f"JAX's CUDA plugin did not start, so it cannot describe {name!r} (on a host without "
                             f"a GPU it starts only with JAX_PLATFORMS=cpu set before JAX starts)") from None
        raise JaxlmError(f"JAX's CUDA plugin could not describe {name!r}: {first}") from None


@functools.cache
def _target_config(chip: str) -> str:
    return resources.files("jaxlm.assets").joinpath("gpu", f"{chip}.txtpb").read_text()


@functools.cache
def _memory_by_kind() -> dict[str, int]:
    """device_kind (the description string) -> device memory in bytes, from the shipped descriptions."""
    sizes = {}
    for chip in GPUS:
        text = _target_config(chip)
        kind = re.search(r'device_description_str: "([^"]+)"', text)[1]
        sizes[kind] = int(re.search(r"device_memory_size: (\d+)", text)[1])
    return sizes


def _mem_fraction() -> float:
    return float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", JAX_MEM_FRACTION))


def usable_bytes(chip: str) -> int:
    """What JAX's allocator gives a program on one GPU of `chip` ("h100"): memory x the client's fraction."""
    return int(int(re.search(r"device_memory_size: (\d+)", _target_config(chip))[1]) * _mem_fraction())


def gpu_memory_bytes(device) -> int | None:
    """`usable_bytes` of a compile-only GPU device (None for a GPU without a shipped description)."""
    total = _memory_by_kind().get(getattr(device, "device_kind", ""))
    return None if total is None else int(total * _mem_fraction())


def gpu_memory_note(device) -> str:
    """How the usable memory of `gpu_memory_bytes` was reached, for the compile report."""
    total, fraction = _memory_by_kind()[device.device_kind], _mem_fraction()
    return (f"usable per GPU: {total * fraction / 2 ** 30:.2f} GiB, {fraction:.0%} of its {total / 2 ** 30:.2f} GiB "
            f"(JAX's allocator share, XLA_PYTHON_CLIENT_MEM_FRACTION)")
