"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

The model tags every parameter dimension with a logical name ("embed", "mlp", ...); RULES maps
each name to a mesh axis. A dimension whose size the mesh axis does not divide is REPLICATED
(never padded): e.g. OpenELM layers with 3 kv heads on tensor=2 keep those heads whole on every
device, while layers with 4 kv heads split. A mesh axis is used at most once per array.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

RULES: dict[str | None, str | tuple[str, ...] | None] = {
    "layers": None,  # the scan axis of a layer group
    "vocab": "tensor",
    "embed": "fsdp",  # FSDP: every weight matrix is split along model_dim
    "kv_heads": "tensor",  # tensor parallelism splits heads (a kv head keeps its q heads)...
    "mlp": "tensor",  # ... and FFN width
    "head_dim": None,
    "norm": None,
    None: None,
}
BATCH_AXES = ("data", "fsdp")  # the batch dimension of inputs and activations

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("jaxlm_mesh", default=None)


def _axis_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def logical_to_spec(logical_axes: tuple, shape: tuple[int, ...], mesh: Mesh, rules=RULES) -> P:
    """PartitionSpec for an array whose dimensions carry `logical_axes` (replicate when not divisible)."""
    used: set[str] = set()
    out = []
    for name, size in zip(logical_axes, shape):
        target = rules.get(name)
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n in mesh.shape and mesh.shape[n] > 1 and n not in used)
        if names and size % _axis_size(mesh, names) == 0:
            used.update(names)
            out.append(names[0] if len(names) == 1 else names)
        else:
            out.append(None)
    return P(*out)


def param_shardings(axes_tree, shapes_tree, mesh: Mesh):
    """NamedShardings for a tree of parameters, from a same-structured tree of logical-axes tuples."""
    return jax.tree.map(lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh)),
                        axes_tree, shapes_tree, is_leaf=lambda a: isinstance(a, tuple))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """(B, ...) arrays split over the data and fsdp axes on B."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
    """Make `constrain` (and the kernels' shard_map) active while tracing a program under `mesh`."""
    token = _MESH.set(mesh)
    try:
        yield mesh
    finally:
        _MESH.reset(token)


def current_mesh() -> Mesh | None:
    """The mesh of the program being traced under `use_mesh` (None: single-device inference, tests)."""
    return _MESH.get()


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh is active (inference, tests)."""
    mesh = _MESH.get()
    if mesh is None:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, {**RULES, "batch": BATCH_AXES, "embed": None})
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
