"""The OpenELM / Llama 3 / Phi-3 model family.

`Transformer` and `param_count` load lazily: reading a config (every CLI command does) must not
pay for importing flax and jax.
"""

from __future__ import annotations

from jaxlm.model.config import LayerSpec, ModelConfig, RopeScaling
from jaxlm.model.layouts import abstract_model, abstract_params, bucketed_tree, stored_tree, to_bucketed, to_stored

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
