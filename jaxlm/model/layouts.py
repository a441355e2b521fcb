"""Where each layer's weights live: the layouts a model is held in, and the one conversion between each pair.

- STORED: `groups/<g>/...`, each run of identical layers stacked (`cfg.stored_groups`). Held by training
  checkpoints, quantized and LoRA models in memory, and what `load_model` returns. `to_stored`, `stored_tree`.
- BUCKETED: `groups/<b>/...`, similar runs zero-padded into one stack (`cfg.scan_groups`; the same as STORED
  without `scan_pad_budget`). Held by a plain model's train state, scoring, and decode on TPU / GPU.
  `to_bucketed`, `bucketed_tree`.
- UNROLLED: `groups/<i>/...`, one group of one layer per layer (`scan_layers` off). Decode on a CPU
  (`jaxlm.ops.policy`: decode_layers). `to_unrolled`.
- PER_LAYER: `layers/<i>/...`, one leaf per layer, i the global index. Model dirs on disk
  (`jaxlm.checkpoint.params_io`; older model dirs hold STORED). `per_layer_leaves`, `restack`.
- HF: `model.layers.{i}....`, Hugging Face exports. `jaxlm.convert.plan` maps them from STORED.

Two rules decide which layout a model is in, each in one place: a plain model runs in its config's
buckets and a quantized or adapted one stays STORED (`jaxlm.variants.layout_config`); decode runs
UNROLLED or in the run's scan groups by the platform's policy (`jaxlm.variants.decode_model`).
Everything here works on models or on params-shaped pure dicts; JAX loads on first use.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator

from jaxlm.model.buckets import map_param_trees, pad, unpad
from jaxlm.model.config import ModelConfig

LeafPath = tuple[str, ...]
GROUPS, LAYERS = "groups", "layers"


class Layout(enum.Enum):
    STORED = "stored"
    BUCKETED = "bucketed"
    UNROLLED = "unrolled"
    PER_LAYER = "per_layer"
    HF = "hf"


# ---- models: STORED <-> BUCKETED -> UNROLLED --------------------------------------------------------------
def to_bucketed(model, cfg: ModelConfig):
    """A model in the STORED layout -> the same model in cfg's (BUCKETED) layout."""
    return _relayout(model, cfg, bucketed_tree(cfg, _params(model)))


def to_stored(model):
    """A model in any of BUCKETED / STORED -> the same model STORED (what weight transforms such as
    quantization and LoRA work on)."""
    cfg = model.cfg
    if not cfg.bucketed:
        return model
    return _relayout(model, cfg.stored(), stored_tree(cfg, _params(model)))


def to_unrolled(model):
    """The same model UNROLLED: every group of n stacked layers becomes n groups of one.

    Works on plain, quantized and LoRA-wrapped weights alike (every leaf of a group's state has the
    leading layer axis). A BUCKETED model is first brought to STORED. The arrays are sliced once,
    here (the model's weights are copied); an UNROLLED model comes back as it is.
    """
    import jax  # lazy: JAX loads when a model is converted, not when a config is read
    from flax import nnx

    model = to_stored(model)
    cfg = model.cfg
    if not cfg.scan_layers:
        return model
    blocks = []
    for (_, count), block in zip(cfg.stored_groups, model.groups):
        graphdef, state = nnx.split(block)
        blocks.extend(nnx.merge(graphdef, jax.tree.map(lambda x, i=i: _layer(x, i), state)) for i in range(count))
    out = nnx.merge(*nnx.split(model))  # a new module object sharing the (immutable) arrays
    out.groups = nnx.List(blocks)
    out.cfg = dataclasses.replace(cfg, scan_layers=False)
    assert len(out.cfg.scan_groups) == len(blocks)
    return out


# ---- params-shaped trees (and optimizer states): STORED <-> BUCKETED --------------------------------------
def stored_tree(cfg: ModelConfig, tree):
    """A params-shaped pure dict (or a tree of them, e.g. optimizer moments) in cfg's layout -> STORED.
    Identity unless cfg is bucketed."""
    if not cfg.bucketed:
        return tree
    stored_abs = abstract_params(cfg.stored())
    return map_param_trees(lambda t: unpad(t, stored_abs, cfg.buckets), tree)


def bucketed_tree(cfg: ModelConfig, tree):
    """The inverse of `stored_tree`: STORED -> cfg's BUCKETED layout."""
    if not cfg.bucketed:
        return tree
    bucketed_abs = abstract_params(cfg)
    return map_param_trees(lambda t: pad(t, bucketed_abs, cfg.buckets), tree)


# ---- leaf paths: STORED (stacked groups) <-> PER_LAYER ------------------------------------------------------
def is_layer_stack(path: LeafPath) -> bool:
    """Leaves under `groups` hold a group's layers on axis 0 (Orbax's `shard_axes=(0,)` then stores them
    one layer per chunk)."""
    return path[0] == GROUPS


def is_per_layer(saved: Iterable[LeafPath]) -> bool:
    """Whether saved leaf paths are PER_LAYER (a model dir) rather than stacked."""
    return any(p[0] == LAYERS for p in saved)


def layer_offsets(shapes: dict[LeafPath, tuple[int, ...]]) -> dict[str, int]:
    """Group key -> global index of its first layer, from the stacked leaves' shapes."""
    counts = {p[1]: shape[0] for p, shape in shapes.items() if is_layer_stack(p)}
    offsets, first = {}, 0
    for g in sorted(counts, key=int):
        offsets[g], first = first, first + counts[g]
    return offsets


def layer_path(path: LeafPath, layer: int, offsets: dict[str, int]) -> LeafPath:
    """Where layer `layer` of stacked leaf `path` is in the PER_LAYER layout."""
    return (LAYERS, str(offsets[path[1]] + layer)) + path[2:]


def per_layer_leaves(leaves: dict[LeafPath, object], take=lambda x, j: x[j]) -> Iterator[tuple[LeafPath, object]]:
    """Stacked leaves -> PER_LAYER leaves (`take(x, j)`: a view by default); other leaves unchanged."""
    offsets = layer_offsets({p: x.shape for p, x in leaves.items()})
    for path, x in leaves.items():
        if is_layer_stack(path):
            for j in range(x.shape[0]):
                yield layer_path(path, j, offsets), take(x, j)
        else:
            yield path, x


def restack(target, restored: dict[LeafPath, object]):
    """A tree shaped like `target` (stacked, abstract) from the PER_LAYER leaves `restored` (consumed,
    so each layer's array can be freed once stacked)."""
    import jax  # lazy: as above
    import jax.numpy as jnp

    offsets = layer_offsets(flatten(target, lambda x: x.shape))

    def leaf(keypath, x):
        path = key_names(keypath)
        if not is_layer_stack(path):
            return restored.pop(path)
        return jnp.stack([restored.pop(layer_path(path, j, offsets)) for j in range(x.shape[0])])

    return jax.tree_util.tree_map_with_path(leaf, target)


def key_names(keypath) -> LeafPath:
    """A jax key path as a tuple of strings (dict keys, list indices)."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)


def flatten(tree, fn=lambda x: x) -> dict[LeafPath, object]:
    """{leaf path: fn(leaf)} of a tree."""
    import jax  # lazy: as above

    return {key_names(p): fn(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ---- abstract shapes and helpers ----------------------------------------------------------------------
def abstract_model(cfg: ModelConfig):
    """The model with jax.ShapeDtypeStruct leaves: no memory allocated (works for 8B on a laptop)."""
    from flax import nnx  # lazy: as above

    from jaxlm.model.transformer import Transformer

    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))


def abstract_params(cfg: ModelConfig) -> dict:
    """The params pure dict of `abstract_model(cfg)` (ShapeDtypeStructs)."""
    from flax import nnx  # lazy: as above

    return nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()


def _params(model) -> dict:
    from flax import nnx  # lazy: as above

    return nnx.state(model, nnx.Param).to_pure_dict()


def _relayout(model, cfg: ModelConfig, params: dict):
    from flax import nnx  # lazy: as above

    graphdef, state = nnx.split(abstract_model(cfg))
    state.replace_by_pure_dict(params)
    return nnx.merge(graphdef, state)


def _layer(x, i: int):
    """Layer i of a stacked array, keeping a leading axis of 1 (abstract shapes stay abstract)."""
    import jax  # lazy: as above

    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
    return x[i:i + 1]
