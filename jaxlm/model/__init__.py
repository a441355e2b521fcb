"""The OpenELM / Llama 3 / Phi-3 model family.

`Transformer` and `param_count` load lazily: reading a config (every CLI command does) must not
pay for importing flax and jax.
"""

from __future__ import annotations

from jaxlm.model import buckets
from jaxlm.model.config import LayerSpec, ModelConfig, RopeScaling

__all__ = ["LayerSpec", "ModelConfig", "RopeScaling", "Transformer", "param_count", "abstract_model", "abstract_params",
           "build_model", "bucketed_tree", "stored_tree", "to_bucketed", "to_stored"]


def __getattr__(name: str):
    if name in ("Transformer", "param_count"):
        # lazy: Flax and JAX load when a model is built, not when a config is read
        from jaxlm.model import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'jaxlm.model' has no attribute {name!r}")


def build_model(cfg: ModelConfig, seed: int = 0):
    """A randomly initialised model (a `Transformer`). A bucketed config gets the same weights as its
    unpadded layout (`cfg.stored()`), zero-padded: the bucketing never changes the model."""
    # lazy: Flax and JAX load when a model is built, not when a config is read
    from flax import nnx

    from jaxlm.model.transformer import Transformer

    if cfg.bucketed:
        return to_bucketed(Transformer(cfg.stored(), rngs=nnx.Rngs(params=seed)), cfg)
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig):
    """The model with jax.ShapeDtypeStruct leaves: no memory allocated (works for 8B on a laptop)."""
    # lazy: Flax and JAX load when a model is built, not when a config is read
    from flax import nnx

    from jaxlm.model.transformer import Transformer

    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))


def abstract_params(cfg: ModelConfig) -> dict:
    """The params pure dict of `abstract_model(cfg)` (ShapeDtypeStructs)."""
    # lazy: Flax and JAX load when a model is built, not when a config is read
    from flax import nnx

    return nnx.state(abstract_model(cfg), nnx.Param).to_pure_dict()


def stored_tree(cfg: ModelConfig, tree):
    """A params-shaped pure dict (or a tree of them, e.g. optimizer moments) in cfg's in-memory layout
    -> the stored (unpadded) layout of checkpoints and model dirs. Identity unless cfg is bucketed."""
    if not cfg.bucketed:
        return tree
    stored_abs = abstract_params(cfg.stored())
    return buckets.map_param_trees(lambda t: buckets.to_stored(t, stored_abs, cfg.buckets), tree)


def bucketed_tree(cfg: ModelConfig, tree):
    """The inverse of `stored_tree`: stored layout -> cfg's (padded) in-memory layout."""
    if not cfg.bucketed:
        return tree
    bucketed_abs = abstract_params(cfg)
    return buckets.map_param_trees(lambda t: buckets.to_buckets(t, bucketed_abs, cfg.buckets), tree)


def to_bucketed(model, cfg: ModelConfig):
    """A model in the stored layout (plain nnx.Param weights) -> the same model in cfg's layout."""
    return _relayout(model, cfg, bucketed_tree(cfg, _params(model)))


def to_stored(model):
    """A (possibly bucketed) model -> the same model in its stored, unpadded layout (what weight
    transforms such as quantization and LoRA work on)."""
    cfg = model.cfg
    if not cfg.bucketed:
        return model
    return _relayout(model, cfg.stored(), stored_tree(cfg, _params(model)))


def _params(model) -> dict:
    # lazy: Flax and JAX load when a model is built, not when a config is read
    from flax import nnx

    return nnx.state(model, nnx.Param).to_pure_dict()


def _relayout(model, cfg: ModelConfig, params: dict):
    # lazy: Flax and JAX load when a model is built, not when a config is read
    from flax import nnx

    graphdef, state = nnx.split(abstract_model(cfg))
    state.replace_by_pure_dict(params)
    return nnx.merge(graphdef, state)
