"""The OpenELM / Llama 3 / Phi-3 model family.

`Transformer` and `param_count` load lazily: reading a config (every CLI command does) must not
pay for importing flax and jax.
"""

from __future__ import annotations

from jaxlm.model.config import LayerSpec, ModelConfig, RopeScaling

__all__ = ["LayerSpec", "ModelConfig", "RopeScaling", "Transformer", "param_count", "abstract_model", "build_model"]


def __getattr__(name: str):
    if name in ("Transformer", "param_count"):
        from jaxlm.model import transformer

        return getattr(transformer, name)
    raise AttributeError(f"module 'jaxlm.model' has no attribute {name!r}")


def build_model(cfg: ModelConfig, seed: int = 0):
    """A randomly initialised model (a `Transformer`)."""
    from flax import nnx

    from jaxlm.model.transformer import Transformer

    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig):
    """The model with jax.ShapeDtypeStruct leaves: no memory allocated (works for 8B on a laptop)."""
    from flax import nnx

    from jaxlm.model.transformer import Transformer

    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
