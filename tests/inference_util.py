"""Shared by the inference tests: a random model built without one eager RNG compile per weight."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.model import abstract_model


def random_model(cfg, seed: int = 0):
    """Same architecture as build_model(cfg); weights ~ N(0, model_dim^-1/2), norm weights 1."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(cfg))

    def fill(path, x):
        if not hasattr(x, "shape"):
            return x
        names = "/".join(str(p) for p in path)
        if "norm" in names:
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape) * cfg.model_dim ** -0.5, x.dtype)

    pure = state.to_pure_dict()
    state.replace_by_pure_dict(jax.tree_util.tree_map_with_path(fill, pure))
    return nnx.merge(graphdef, state)
