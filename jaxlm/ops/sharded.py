"""Kernels inside sharded programs: the one shard_map wrapper of the ops layer.

XLA cannot partition a custom kernel: Mosaic refuses ("cannot be automatically partitioned"),
and a Triton call gets its inputs gathered and its work repeated on every device. So under a
mesh (`jaxlm.parallel.use_mesh`, active while the train step or `jaxlm compile` traces) a kernel
runs under `jax.shard_map`, each device on its own shard. Arguments name their dimensions with
two logical axes:

  "batch"  split over the mesh's batch axes (data, fsdp): the longest leading run of them whose
           product divides the size (batch 2 on data=2, fsdp=4 splits over data only); the
           rest of the mesh holds replicas.
  "heads"  split over "tensor" when every "heads" dimension of the call divides by it, else
           whole on every device (OpenELM's 3-kv-head layers on tensor=2): each tensor-parallel
           device then computes all heads of that layer, just as the rule table replicates the
           weights of such a layer (documented fallback: correct, redundant work).

Every other dimension is whole on each device. Outside a mesh, or on one device, the kernel is
called directly. Gradients: shard_map's transpose sums the cotangents of replicated inputs
(a norm weight) over the axes they are replicated on, so weight gradients are global.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec as P

from jaxlm.parallel import rules

Axes = tuple[str | None, ...]  # one logical name (or None) per dimension of an argument


def per_shard(kernel: Callable, args: Sequence[jax.Array], in_axes: Sequence[Axes],
              out_axes: Axes | tuple[Axes, ...]):
    """kernel(*args) with every argument split by its logical axes over the active mesh.

    out_axes: one Axes for a single output, or a tuple of Axes for a tuple of outputs.
    """
    mesh = rules.current_mesh()
    if mesh is None or mesh.size == 1:
        return kernel(*args)
    mapping = _mesh_axes(mesh, args, in_axes)
    spec = lambda axes: P(*(mapping.get(name) for name in axes))  # noqa: E731
    multi = bool(out_axes) and isinstance(out_axes[0], tuple)
    out_specs = tuple(spec(a) for a in out_axes) if multi else spec(out_axes)
    return jax.shard_map(kernel, mesh=mesh, in_specs=tuple(spec(a) for a in in_axes), out_specs=out_specs,
                         check_vma=False)(*args)


def _mesh_axes(mesh: Mesh, args, in_axes) -> dict[str, str | tuple[str, ...]]:
    """Logical name -> mesh axes for this call, from the sizes of the dimensions that carry it."""
    sizes: dict[str, set[int]] = {}
    for x, axes in zip(args, in_axes):
        if len(axes) != x.ndim:
            raise ValueError(f"per_shard: axes {axes} do not match an argument of shape {x.shape}")
        for name, size in zip(axes, x.shape):
            if name is not None:
                sizes.setdefault(name, set()).add(size)
    out: dict[str, str | tuple[str, ...]] = {}
    batch_axes: list[str] = []
    for axis in (a for a in rules.BATCH_AXES if mesh.shape.get(a, 1) > 1):
        ways = math.prod(mesh.shape[a] for a in batch_axes) * mesh.shape[axis]
        if any(size % ways for size in sizes.get("batch", ())):
            break
        batch_axes.append(axis)
    if batch_axes:
        out["batch"] = tuple(batch_axes)
    tensor = mesh.shape.get("tensor", 1)
    if tensor > 1 and sizes.get("heads") and all(s % tensor == 0 for s in sizes["heads"]):
        out["heads"] = "tensor"
    return out
