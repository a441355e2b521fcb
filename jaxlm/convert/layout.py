"""Layout transforms between one jaxlm layer tensor and its PyTorch `nn.Linear` tensors.

PyTorch Linear weights are (out, in); jaxlm stores inputs first and keeps heads as axes:
  attn.qkv (D, Hkv, G+2, hd)   attn.out (Hkv, G, hd, D)   ffn.w_in (D, 2, F)   ffn.w_out (F, D)
Query head h of the HF layout is jaxlm's (kv head h // G, slot h % G): HF repeats kv head k for
query heads k*G .. k*G+G-1, which is how jaxlm groups them, so no head permutation is needed.
Both sides use rotate-half RoPE, so q/k rows are not permuted either (Meta's original checkpoints
use interleaved pairs and would need torchtitan's permutation; not supported here).

Every transform is a reshape / transpose / split / concatenate: conversion is bit-exact.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxlm.model.config import ModelConfig

Shape = tuple[int, ...]


class Transform:
    """One jaxlm tensor (of one layer) <-> one or more HF tensors."""

    def hf_shapes(self, shape: Shape) -> tuple[Shape, ...]:
        raise NotImplementedError

    def to_hf(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def from_hf(self, arrays: tuple[np.ndarray, ...], shape: Shape) -> np.ndarray:
        raise NotImplementedError


class Identity(Transform):
    """Norm weights and the embedding table: same layout on both sides."""

    def hf_shapes(self, shape):
        return (shape,)

    def to_hf(self, x):
        return (x,)

    def from_hf(self, arrays, shape):
        return arrays[0]


class Transpose(Transform):
    """(in, out) <-> Linear (out, in): lm_head (D, V), ffn.w_out (F, D)."""

    def hf_shapes(self, shape):
        return (shape[::-1],)

    def to_hf(self, x):
        return (x.T,)

    def from_hf(self, arrays, shape):
        return arrays[0].T


class QKV(Transform):
    """attn.qkv (D, Hkv, G+2, hd) <-> q (Hq*hd, D), k (Hkv*hd, D), v (Hkv*hd, D); `fused`: rows q | k | v."""

    def __init__(self, fused: bool):
        self.fused = fused

    def hf_shapes(self, shape):
        d, hkv, g2, hd = shape
        q, kv = (hkv * (g2 - 2) * hd, d), (hkv * hd, d)
        return ((q[0] + 2 * kv[0], d),) if self.fused else (q, kv, kv)

    def to_hf(self, x):
        d, hkv, g2, hd = x.shape
        g = g2 - 2
        q = x[:, :, :g].reshape(d, hkv * g * hd).T  # (Hq*hd, D): row (k*G + g)*hd + i
        k = x[:, :, g].reshape(d, hkv * hd).T  # (Hkv*hd, D)
        v = x[:, :, g + 1].reshape(d, hkv * hd).T
        return (np.concatenate([q, k, v], axis=0),) if self.fused else (q, k, v)

    def from_hf(self, arrays, shape):
        d, hkv, g2, hd = shape
        g = g2 - 2
        if self.fused:
            arrays = np.split(arrays[0], [hkv * g * hd, hkv * (g + 1) * hd], axis=0)
        q, k, v = arrays
        return np.concatenate([q.T.reshape(d, hkv, g, hd), k.T.reshape(d, hkv, 1, hd),
                               v.T.reshape(d, hkv, 1, hd)], axis=2)  # (D, Hkv, G+2, hd)


class OutProj(Transform):
    """attn.out (Hkv, G, hd, D) <-> o_proj (D, Hq*hd)."""

    def hf_shapes(self, shape):
        hkv, g, hd, d = shape
        return ((d, hkv * g * hd),)

    def to_hf(self, x):
        return (x.reshape(-1, x.shape[-1]).T,)

    def from_hf(self, arrays, shape):
        return arrays[0].T.reshape(shape)


class GateUp(Transform):
    """ffn.w_in (D, 2, F) <-> gate (F, D), up (F, D); `fused`: one (2F, D), gate rows first."""

    def __init__(self, fused: bool):
        self.fused = fused

    def hf_shapes(self, shape):
        d, _, f = shape
        return ((2 * f, d),) if self.fused else ((f, d), (f, d))

    def to_hf(self, x):
        d, _, f = x.shape
        if self.fused:
            return (x.transpose(1, 2, 0).reshape(2 * f, d),)
        return x[:, 0].T, x[:, 1].T

    def from_hf(self, arrays, shape):
        d, _, f = shape
        gate, up = np.split(arrays[0], 2, axis=0) if self.fused else arrays
        return np.stack([gate.T, up.T], axis=1)  # (D, 2, F)


IDENTITY, TRANSPOSE, OUT_PROJ = Identity(), Transpose(), OutProj()


@dataclasses.dataclass(frozen=True)
class Rule:
    """One entry of a family's key map: a jaxlm leaf (path inside the model or inside a layer),
    the HF tensor names it becomes, and the transform between them."""

    leaf: tuple[str, ...]
    hf: tuple[str, ...]
    transform: Transform


# What an adapter is. Its explicit key map (`top` rules for whole-model tensors, `layer` rules under
# `layer_prefix`) and its two config mappings. Rules whose jaxlm leaf the model lacks (lm_head when
# tied, q_norm without QK-norm) are skipped, so the expected HF tensor set follows from the config.
@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    top: tuple[Rule, ...]
    layer_prefix: str  # e.g. "model.layers.{i}."
    layer: tuple[Rule, ...]
    config_to_hf: Callable[[ModelConfig], dict]  # raises JaxlmError when the model does not fit the layout
    config_from_hf: Callable[[dict], dict]  # HF config.json -> the `model:` section of a jaxlm config
    # Suffixes of HF entries that hold no weights (old checkpoints saved RoPE buffers).
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # Model code (in jaxlm/convert/hf_code) written beside the weights, for trust_remote_code.
    code_files: tuple[str, ...] = ()
