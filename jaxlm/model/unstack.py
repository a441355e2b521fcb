"""One group per layer: the layout decode runs in on a CPU.

A scanned group reads its layer's weights by dynamic-slicing the stacked (L, ...) arrays, and
XLA:CPU copies each slice before its matmul: the decode step then moves every weight three
times instead of once (docs/inference.md has the cost analysis). With one group of one layer
per layer, the scan has a single iteration, XLA removes it, and each matmul reads its weight
where it lies. Parameter values are unchanged; the KV cache gets one entry per layer.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jaxlm.model import to_stored


def _layer(x, i: int):
    """Layer i of a stacked array, keeping a leading axis of 1 (abstract shapes stay abstract)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
    return x[i:i + 1]


def unstacked(model):
    """The same model with `scan_layers` off: every group of n stacked layers becomes n groups of one.

    Works on plain, quantized and LoRA-wrapped weights alike (every leaf of a group's state has
    the leading layer axis). A bucketed (padded) model is first brought to its stored layout.
    The arrays are sliced once, here (the model's weights are copied).
    """
    model = to_stored(model)
    cfg = model.cfg
    if not cfg.scan_layers:
        return model
    blocks = []
    for (_, count), block in zip(cfg.stored_groups, model.groups):
        graphdef, state = nnx.split(block)
        blocks.extend(nnx.merge(graphdef, jax.tree.map(lambda x, i=i: _layer(x, i), state)) for i in range(count))
    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, state)  # a new module object sharing the (immutable) arrays
    out.groups = nnx.List(blocks)
    out.cfg = dataclasses.replace(cfg, scan_layers=False)
    assert len(out.cfg.layer_groups) == len(blocks)
    return out
