"""The tensor plan of one model under one family: which HF tensor comes from which jaxlm leaf.

HF layer i lives in jaxlm group g at index j of its stacked "layers" axis, following
`cfg.stored_groups` (runs of identical layers, unpadded: the layout of checkpoints); a model dir
stores it as layers/<i>/... (params_io).
Shapes come from `abstract_model` (no memory).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jaxlm.convert.family import Family
from jaxlm.convert.layout import Rule
from jaxlm.model import abstract_model
from jaxlm.model.config import ModelConfig
from jaxlm.model.layouts import LAYERS

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Item:
    jax_path: Path  # leaf in the params tree, e.g. ("groups", "0", "attn", "qkv")
    layer: int | None  # index on the stacked layers axis; None for whole-model tensors
    index: int | None  # global layer index (HF's layers.{index}); None for whole-model tensors
    rule: Rule
    hf_names: tuple[str, ...]
    jax_shape: tuple[int, ...]  # of one layer (stack axis removed)
    hf_shapes: tuple[tuple[int, ...], ...]


def param_shapes(cfg: ModelConfig) -> dict[Path, tuple[tuple[int, ...], str]]:
    """Every nnx.Param leaf of the model: path -> (shape, dtype name), from jax.eval_shape."""
    pure = nnx.state(abstract_model(cfg.stored()), nnx.Param).to_pure_dict()
    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    return {tuple(str(k.key) for k in path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in flat}


def make_plan(family: Family, cfg: ModelConfig) -> list[Item]:
    """HF order: embeddings, layers 0..L-1, final norm, lm_head. Leaves the model lacks are skipped."""
    shapes = param_shapes(cfg)

    def item(path: Path, layer: int | None, index: int | None, rule: Rule, names: tuple[str, ...]) -> Item:
        shape = shapes[path][0][1:] if layer is not None else shapes[path][0]
        return Item(path, layer, index, rule, names, shape, rule.transform.hf_shapes(shape))

    top = [r for r in family.top if r.leaf in shapes]
    items = [item(top[0].leaf, None, None, top[0], top[0].hf)]
    i = 0
    for g, (_, count) in enumerate(cfg.stored_groups):
        for j in range(count):
            prefix = family.layer_prefix.format(i=i)
            for rule in family.layer:
                path = ("groups", str(g)) + rule.leaf
                if path in shapes:
                    items.append(item(path, j, i, rule, tuple(prefix + n for n in rule.hf)))
            i += 1
    items += [item(r.leaf, None, None, r, r.hf) for r in top[1:]]
    covered = {it.jax_path for it in items}
    uncovered = set(shapes) - covered
    if uncovered:  # a parameter the family's key map forgot: a bug, not bad input
        raise AssertionError(f"{family.model_type} key map has no rule for {sorted(uncovered)}")
    return items


def saved_path(it: Item, layered: bool) -> Path:
    """Where the item's jaxlm tensor is saved: its own leaf, one layer of a stacked leaf, or (model
    dirs, `layered`) a per-layer leaf."""
    if it.layer is None or not layered:
        return it.jax_path
    return (LAYERS, str(it.index)) + it.jax_path[2:]
