"""A device mesh with named axes (data, fsdp, tensor), sized from MeshConfig."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from jaxlm.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve a -1 entry and check that the shape uses exactly `num_devices` devices."""
    sizes = [data, fsdp, tensor]
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices: "
                              f"{known} does not divide {num_devices}; set mesh.data/fsdp/tensor to divisors")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs {math.prod(sizes)} "
                          f"devices but {num_devices} are available; make the product of mesh sizes "
                          f"{num_devices} (or set one of them to -1)")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """Mesh over `devices` (default: all, across processes). tensor is the fastest-varying axis,
    so tensor-parallel partners are neighbours (same host / ICI ring)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (AssertionError, ValueError, NotImplementedError):  # e.g. virtual CPU devices
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)
