"""Low-rank adapters on the block projections: W x + (alpha / r) * B(A x), base frozen.

`apply_lora` swaps each targeted weight (an nnx.Param, or a QuantizedWeight for QLoRA-style
training on a quantized base) for a `LoraWeight` module holding the base and two nnx.LoRAParam
factors, stored with the weight's own input / output dims so stacked layers keep their layer axis:
  lora_a (lead..., *in_dims, r)   normal with std fan_in^-0.5
  lora_b (lead..., r, *out_dims)  zeros, so a fresh adapter leaves the model's output unchanged.
`merge_lora` folds the adapters back into plain weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm import ops
from jaxlm.errors import JaxlmError
from jaxlm.lora.config import TARGETS, LoraConfig
from jaxlm.model.layout import BLOCK_WEIGHTS, Weight
from jaxlm.quant.qweight import QuantizedWeight


def target_weight(target: str) -> Weight:
    """The model's layout entry of a LoRA target ("qkv" -> attn.qkv): its dims and logical axes, which
    the adapters' shapes and shardings (and a merged weight's axes) follow."""
    return BLOCK_WEIGHTS[".".join(TARGETS[target])]


class LoraWeight(nnx.Module):
    """A frozen base weight plus a trainable low-rank update; used wherever the model reads the weight."""

    def __init__(self, base, lora_a, lora_b, target: str, scale: float):
        self.base = base  # nnx.Param or QuantizedWeight
        self.lora_a, self.lora_b = lora_a, lora_b  # nnx.LoRAParam
        self.target, self.scale = target, scale

    @property
    def n_in(self) -> int:
        return target_weight(self.target).dims[0]

    def __getitem__(self, key):
        return self if key is Ellipsis else self.merged()[key]

    def dense(self, equation: str, x: jax.Array, dtype) -> jax.Array:
        """einsum(equation, x, W) + scale * (x A) B, for a per-layer weight (inside the layer scan)."""
        y = ops.dense(equation, x, self.base[...], dtype)
        lhs, out_subs = equation.split("->")
        x_subs, w_subs = lhs.split(",")
        in_subs, out_w_subs = w_subs[:self.n_in], w_subs[self.n_in:]
        r = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in equation)
        batch = "".join(c for c in x_subs if c not in in_subs)
        xa = ops.dense(f"{x_subs},{in_subs}{r}->{batch}{r}", x, self.lora_a[...], dtype)
        delta = ops.dense(f"{batch}{r},{r}{out_w_subs}->{out_subs}", xa, self.lora_b[...], dtype)
        return y + (self.scale * delta).astype(dtype)

    def delta(self) -> jax.Array:
        """scale * A B in the weight's layout (lead..., *in, *out), float32."""
        a, b = self.lora_a[...], self.lora_b[...]
        lead = a.shape[: a.ndim - self.n_in - 1]
        in_shape, r = a.shape[len(lead):-1], a.shape[-1]
        out_shape = b.shape[len(lead) + 1:]
        am = a.reshape(lead + (math.prod(in_shape), r)).astype(jnp.float32)
        bm = b.reshape(lead + (r, math.prod(out_shape))).astype(jnp.float32)
        return (self.scale * (am @ bm)).reshape(lead + in_shape + out_shape)

    def base_array(self) -> jax.Array:
        return self.base.dequantize() if isinstance(self.base, QuantizedWeight) else self.base[...]

    def merged(self) -> jax.Array:
        base = self.base_array()
        return (base.astype(jnp.float32) + self.delta()).astype(base.dtype)


def lora_weights(model):
    """(group index, target name, parent module, attribute) of every block projection."""
    for gi, block in enumerate(model.groups):
        for target, (sub, attr) in TARGETS.items():
            yield gi, target, getattr(block, sub), attr


def apply_lora(model, cfg: LoraConfig):
    """Wrap cfg.targets of every block with rank-cfg.rank adapters (in place); returns the model.

    Works on concrete and on abstract (eval_shape) models.
    """
    if model.cfg.bucketed:  # a programming error: adapters are per stored layer, not per padded bucket
        raise JaxlmError("apply LoRA to a model in its stored layout: pass jaxlm.model.to_stored(model)")
    key = jax.random.key(cfg.seed)
    for gi, target, parent, attr in lora_weights(model):
        if target not in cfg.targets:
            continue
        w = getattr(parent, attr)
        if isinstance(w, LoraWeight):
            raise JaxlmError("LoRA adapters are already applied to this model; merge them first "
                             "(`jaxlm lora merge`) or train the existing ones")
        n_in, n_out = target_weight(target).dims
        shape, dtype = tuple(w.shape), jnp.dtype(w.dtype)
        lead = shape[: len(shape) - n_in - n_out]
        in_shape, out_shape = shape[len(lead):len(lead) + n_in], shape[len(lead) + n_in:]
        in_axes, out_axes = target_weight(target).in_axes, target_weight(target).out_axes
        lead_axes = ("layers",) * len(lead)
        a_shape, b_shape = lead + in_shape + (cfg.rank,), lead + (cfg.rank,) + out_shape
        key, sub = jax.random.split(key)
        if _is_abstract(w):
            a, b = jax.ShapeDtypeStruct(a_shape, dtype), jax.ShapeDtypeStruct(b_shape, dtype)
        else:
            a = (jax.random.normal(sub, a_shape, jnp.float32) * math.prod(in_shape) ** -0.5).astype(dtype)
            b = jnp.zeros(b_shape, dtype)
        setattr(parent, attr, LoraWeight(w, nnx.LoRAParam(a, axes=lead_axes + in_axes + (None,)),
                                         nnx.LoRAParam(b, axes=lead_axes + (None,) + out_axes), target, cfg.scale))
    return model


def _is_abstract(w) -> bool:
    leaves = jax.tree.leaves(nnx.state(w) if isinstance(w, nnx.Module) else w)
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def merge_lora(model):
    """Fold every adapter into its base (in place): W <- W + scale * A B as a plain nnx.Param. A quantized
    base is dequantized first, so the merged model is a float model. Returns the model."""
    for _, target, parent, attr in lora_weights(model):
        w = getattr(parent, attr)
        if isinstance(w, LoraWeight):
            lead = ("layers",) * (w.lora_a.ndim - w.n_in - 1)
            setattr(parent, attr, nnx.Param(w.merged(), axes=lead + target_weight(target).axes))
    return model


def has_lora(model) -> bool:
    return any(isinstance(getattr(p, a), LoraWeight) for _, _, p, a in lora_weights(model))
