"""The OpenELM / Llama 3 / Phi-3 model family."""

from jaxlm.model.config import LayerSpec, ModelConfig, RopeScaling
from jaxlm.model.transformer import Transformer, param_count

__all__ = ["LayerSpec", "ModelConfig", "RopeScaling", "Transformer", "param_count", "abstract_model", "build_model"]


def build_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model."""
    from flax import nnx

    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with jax.ShapeDtypeStruct leaves: no memory allocated (works for 8B on a laptop)."""
    from flax import nnx

    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
