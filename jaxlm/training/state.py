"""The model as pure trees for the jitted step: trainable params, frozen rest, logical axes.

Which variables train is decided in ONE place, `jaxlm.variants.trainable_filter`.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx
from flax.nnx import traversals

from jaxlm.variants import trainable_filter


@dataclasses.dataclass
class SplitModel:
    """graphdef + templates to rebuild the model from pure dicts inside jit."""

    graphdef: nnx.GraphDef
    trainable: nnx.State  # template (abstract or concrete) of the trainable variables
    rest: nnx.State  # template of everything else (frozen base weights under LoRA, ...)

    def merge(self, params: dict, rest: dict) -> nnx.Module:
        return nnx.merge(self.graphdef, _fill(self.trainable, params), _fill(self.rest, rest))


def split_model(model: nnx.Module, lora) -> tuple[SplitModel, dict, dict]:
    """model -> (SplitModel, trainable pure dict, rest pure dict); `lora`: the run's LoraConfig."""
    graphdef, trainable, rest = nnx.split(model, trainable_filter(lora), ...)
    return SplitModel(graphdef, trainable, rest), trainable.to_pure_dict(), rest.to_pure_dict()


def _fill(template: nnx.State, pure: dict) -> nnx.State:
    state = jax.tree.map(lambda x: x, template)  # a fresh copy of the Variables
    state.replace_by_pure_dict(pure)
    return state


def logical_axes(state: nnx.State) -> dict:
    """Pure dict (same tree as to_pure_dict) of each variable's logical axis names (None when untagged)."""
    flat = {}
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("axes") if isinstance(var, nnx.Variable) else None
        shape = getattr(var.get_value() if hasattr(var, "get_value") else var, "shape", ())
        if axes is None or len(axes) != len(shape):
            axes = (None,) * len(shape)  # untagged (e.g. an adapter): replicated
        flat[path] = tuple(axes)
    return traversals.unflatten_mapping(flat)


def merge_trees(a: dict, b: dict) -> dict:
    """Deep union of two nested dicts with disjoint leaves (trainable + frozen -> all parameters)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def take_like(full: dict, like: dict) -> dict:
    """The part of `full` whose keys appear in `like` (inverse of merge_trees)."""
    return {k: take_like(full[k], v) if isinstance(v, dict) else full[k] for k, v in like.items()}


def drop_like(full: dict, like: dict) -> dict:
    """The part of `full` whose leaves are not in `like`."""
    out = {}
    for k, v in full.items():
        if k not in like:
            out[k] = v
        elif isinstance(v, dict) and isinstance(like[k], dict):
            rest = drop_like(v, like[k])
            if rest:
                out[k] = rest
    return out
