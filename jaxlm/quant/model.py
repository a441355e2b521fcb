"""Quantize a Transformer's weights in place, and account for the bytes they take.

The linear layers of every block (attn.qkv, attn.out, ffn.w_in, ffn.w_out) get the configured
scheme; the embedding table and an untied output head stay as they are unless
`embed_bits: 8` (int8, one scale per vocabulary row). Stacked layers keep their leading
layer axis: scales are per layer, per output channel and per group along the input dim.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import jax
import numpy as np
from flax import nnx

from jaxlm.errors import JaxlmError
from jaxlm.model import abstract_model
from jaxlm.model.layout import BLOCK_WEIGHTS, EMBED_AXES, LM_HEAD_AXES
from jaxlm.quant import formats
from jaxlm.quant.config import QuantConfig
from jaxlm.quant.formats import Scheme
from jaxlm.quant.qweight import QuantizedWeight


def block_weights(model) -> Iterator[tuple[int, str, nnx.Module, str, tuple[int, int]]]:
    """(group index, "attn.qkv", parent module, attribute, (n_in, n_out)) for every linear weight, from
    the model's layout table (jaxlm.model.layout)."""
    for gi, block in enumerate(model.groups):
        for name, w in BLOCK_WEIGHTS.items():
            yield gi, name, getattr(block, w.module), w.attr, w.dims


def weight_axes(name: str) -> tuple[tuple, tuple]:
    """The logical (in, out) axes of block weight `name` ("attn.qkv"): what its codes and scales shard by."""
    w = BLOCK_WEIGHTS[name]
    return w.in_axes, w.out_axes


def linear_scheme(qcfg: QuantConfig) -> Scheme:
    return Scheme(qcfg.bits, qcfg.group_size, qcfg.symmetric)


def is_quantized(model) -> bool:
    """Whether any weight of the model is a QuantizedWeight."""
    return any(isinstance(getattr(p, a), QuantizedWeight) for _, _, p, a, _ in block_weights(model)) or \
        isinstance(model.embed, QuantizedWeight)


def quantize_model(model, qcfg: QuantConfig,
                   quantize_fn: Callable[[int, str, jax.Array, Scheme, tuple[int, int]],
                                         QuantizedWeight] | None = None):
    """Replace the model's weights by QuantizedWeight modules (in place) and return the model.

    quantize_fn(group, name, w, scheme, dims) overrides round-to-nearest for the block weights
    (GPTQ plugs in here).
    """
    if model.cfg.bucketed:  # a programming error: the weights are per padded bucket, not per layer
        raise JaxlmError("quantize a model in its stored layout: pass jaxlm.model.to_stored(model)")
    if is_quantized(model):
        raise JaxlmError("the model is already quantized; quantize the original (16/32-bit) checkpoint instead")
    check_scheme(model, qcfg)  # before changing anything, so a bad group size leaves the model intact
    if qcfg.bits < 16:
        scheme = linear_scheme(qcfg)
        for gi, name, parent, attr, dims in block_weights(model):
            w = getattr(parent, attr)
            if not isinstance(w, nnx.Param):
                raise JaxlmError(f"cannot quantize {name}: it is a {type(w).__name__} (merge LoRA adapters first "
                                 f"with `jaxlm lora merge`)")
            if quantize_fn is None:
                qw = QuantizedWeight.from_array(w.get_value(), scheme, *dims, name=f"group {gi} {name}",
                                                axes=weight_axes(name))
            else:
                qw = quantize_fn(gi, name, w.get_value(), scheme, dims)
            setattr(parent, attr, qw)
    if qcfg.embed_bits == 8:
        per_row = Scheme(8, None, True)
        vocab, embed = EMBED_AXES  # the (V, D) table is stored transposed: in = D, out = V
        model.embed = QuantizedWeight.from_array(model.embed.get_value(), per_row, 1, 1, transposed=True, name="embed",
                                                 axes=((embed,), (vocab,)))
        if model.lm_head is not None:
            model.lm_head = QuantizedWeight.from_array(model.lm_head.get_value(), per_row, 1, 1, name="lm_head",
                                                       axes=(LM_HEAD_AXES[:1], LM_HEAD_AXES[1:]))
    return model


def dequantize_model(model):
    """Replace every QuantizedWeight by a plain nnx.Param of its dequantized values (in place)."""
    for _, name, parent, attr, _ in block_weights(model):
        w = getattr(parent, attr)
        if isinstance(w, QuantizedWeight):
            setattr(parent, attr, nnx.Param(w.dequantize(),
                                            axes=("layers",) * len(w.lead_shape) + BLOCK_WEIGHTS[name].axes))
    if isinstance(model.embed, QuantizedWeight):
        model.embed = nnx.Param(model.embed.dequantize(), axes=EMBED_AXES)
    if isinstance(model.lm_head, QuantizedWeight):
        model.lm_head = nnx.Param(model.lm_head.dequantize(), axes=LM_HEAD_AXES)
    return model


def check_scheme(model, qcfg: QuantConfig) -> None:
    """Raise a JaxlmError naming the first weight that cannot be quantized (LoRA-wrapped, or an input dim
    the packed codes do not fit)."""
    if qcfg.bits < 16:
        scheme = linear_scheme(qcfg)
        for gi, name, parent, attr, (n_in, n_out) in block_weights(model):
            w = getattr(parent, attr)
            if not isinstance(w, (nnx.Param, QuantizedWeight)):
                raise JaxlmError(f"cannot quantize {name}: it is a {type(w).__name__} (merge LoRA adapters first "
                                 f"with `jaxlm lora merge`)")
            shape = w.shape
            scheme.group_for(math.prod(shape[len(shape) - n_in - n_out:len(shape) - n_out]), f"group {gi} {name}")


def abstract_quantized(model_cfg, qcfg: QuantConfig):
    """The quantized model's structure with ShapeDtypeStruct leaves (to restore a checkpoint into)."""
    # the stored layout (no layer buckets): scales are per real layer; from_array: shapes by arithmetic
    return quantize_model(abstract_model(model_cfg.stored()), qcfg)


def storage_report(model) -> dict:
    """Bytes actually stored, split into quantized weights and the rest.

    Returns dict(quantized_weights, quantized_bytes, other_weights, other_bytes, total_bytes,
    bits_per_quantized_weight, bytes_per_param). Works on abstract models (eval_shape).
    """
    qweights = [node for _, node in nnx.iter_graph(model) if isinstance(node, QuantizedWeight)]
    q_n = sum(q.num_weights() for q in qweights)
    q_bytes = sum(q.stored_bytes() for q in qweights)
    all_leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    all_bytes = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in all_leaves)
    all_n_stored = sum(math.prod(x.shape) for x in all_leaves)
    q_stored_elems = sum(sum(math.prod(a.shape) for a in (q.codes, q.scale, q.zero) if a is not None)
                         for q in qweights)
    other_n = all_n_stored - q_stored_elems
    other_bytes = all_bytes - q_bytes
    total_params = q_n + other_n
    return dict(quantized_weights=q_n, quantized_bytes=q_bytes, other_weights=other_n, other_bytes=other_bytes,
                total_bytes=all_bytes, total_params=total_params,
                bits_per_quantized_weight=8 * q_bytes / q_n if q_n else float("nan"),
                bytes_per_param=all_bytes / total_params)


def group_sizes(model) -> dict[str, int]:
    """Input rows per scale actually used by each quantized weight (name -> group), from its shapes."""
    out = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, QuantizedWeight):
            out[".".join(str(p) for p in path)] = (node.codes.shape[-2] * formats.PER_BYTE[node.bits]
                                                   // node.scale.shape[-2])
    return out


def describe_scheme(model, qcfg: QuantConfig) -> str:
    """One line: the scheme as applied to `model` (a quantized model, abstract or not), naming the weights
    whose input dim made a smaller group than the one asked for, and what the embeddings are stored as."""
    group = f"group {qcfg.group_size}" if qcfg.group_size else "per channel"
    if qcfg.group_size and qcfg.bits < 16:
        by_group: dict[int, list[str]] = {}
        for name, g in group_sizes(model).items():
            if g != qcfg.group_size and "embed" not in name and "lm_head" not in name:
                by_group.setdefault(g, []).append(name)
        if by_group:
            group += " (" + "; ".join(f"group {g} for {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                                      for g, names in sorted(by_group.items())) + \
                f": {qcfg.group_size} does not divide their input dim)"
    embed = "int8, one scale per row" if qcfg.embed_bits == 8 else f"unquantized ({model.cfg.param_dtype})"
    return (f"quantized: {qcfg.bits}-bit {group} {'symmetric' if qcfg.symmetric else 'asymmetric'} ({qcfg.method}), "
            f"embeddings {embed}")


def describe_storage(run_cfg, disk_bytes: int | None = None) -> str:
    """Lines for `jaxlm model-info`: bytes of the quantized model (from shapes), and `disk_bytes`, the size of
    its saved params/ (`jaxlm.checkpoint.locate.params_disk_bytes`), when given."""
    model = abstract_quantized(run_cfg.model, run_cfg.quant)
    rep = storage_report(model)
    lines = [describe_scheme(model, run_cfg.quant),
             f"  {rep['quantized_weights']:,} quantized weights in {rep['quantized_bytes']:,} bytes = "
             f"{rep['bits_per_quantized_weight']:.3f} bits per weight (scales and zero points included)",
             f"  {rep['other_weights']:,} other parameters in {rep['other_bytes']:,} bytes",
             f"  whole model: {rep['total_bytes']:,} bytes ({rep['total_bytes'] / 2**20:.2f} MiB) = "
             f"{rep['bytes_per_param']:.3f} bytes per parameter"]
    if disk_bytes is not None:
        lines.append(f"  on disk (params/, Orbax files incl. metadata): {disk_bytes:,} bytes")
    return "\n".join(lines)
