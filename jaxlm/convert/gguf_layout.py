"""GGUF tensor names and layouts: the HF-layout plan (jaxlm.convert.plan) renamed by gguf's own
TensorNameMap, plus the two changes llama.cpp's convert_hf_to_gguf.py makes to HF tensors:

- llama: q_proj / k_proj rows are permuted per head from rotate-half pairs (i, i + hd/2) to the
  interleaved pairs (2i, 2i + 1) of llama.cpp's "normal" RoPE (its LlamaModel.permute). phi3 and
  openelm use llama.cpp's NeoX RoPE, which is rotate-half: no permutation.
- openelm: ffn.proj_1 (gate rows, then up rows) becomes two tensors, ffn_gate and ffn_up.

Shapes here are numpy (HF) order, (out, in); GGUF records them reversed, (in, out).
Every change is a row permutation or a row slice, so it applies alike to float weights and to the
per-row codes and scales of a quantized weight (jaxlm.convert.gguf_quant).
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from jaxlm.convert.family import Family
from jaxlm.convert.plan import Item, make_plan
from jaxlm.errors import JaxlmError
from jaxlm.model.config import ModelConfig

# jaxlm export family -> GGUF general.architecture
ARCHES = {"llama": gguf.MODEL_ARCH.LLAMA, "phi3": gguf.MODEL_ARCH.PHI3, "openelm": gguf.MODEL_ARCH.OPENELM}
ROPE_FREQS, ROPE_LONG, ROPE_SHORT = (gguf.TENSOR_NAMES[t] + ".weight" for t in (
    gguf.MODEL_TENSOR.ROPE_FREQS, gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT))


@dataclasses.dataclass(frozen=True)
class Piece:
    """One GGUF tensor: rows `rows` of HF tensor `source` of a plan item, permuted for llama's RoPE
    when `heads` is set."""

    name: str
    shape: tuple[int, ...]  # numpy order
    source: int  # index into item.hf_names
    rows: tuple[int, int] | None = None
    heads: int | None = None


def arch_name(family: Family) -> str:
    if family.model_type not in ARCHES:
        raise JaxlmError("this model has a sliding window, which llama.cpp's llama architecture lacks (it would "
                         "attend to everything); only Phi-3 models (LongRoPE or a phi3 name) export with one")
    return gguf.MODEL_ARCH_NAMES[ARCHES[family.model_type]]


def gguf_plan(family: Family, cfg: ModelConfig) -> list[tuple[Item, list[Piece]]]:
    """Every plan item with the GGUF tensors it becomes, in HF order."""
    arch = ARCHES[family.model_type]
    names = gguf.get_tensor_name_map(arch, cfg.num_layers)
    return [(it, _pieces(arch, names, it, cfg)) for it in make_plan(family, cfg)]


def _pieces(arch, names: gguf.TensorNameMap, it: Item, cfg: ModelConfig) -> list[Piece]:
    out = []
    for source, (hf_name, shape) in enumerate(zip(it.hf_names, it.hf_shapes)):
        if arch == gguf.MODEL_ARCH.OPENELM and hf_name.endswith("ffn.proj_1.weight"):
            f = shape[0] // 2
            for kind, rows in ((gguf.MODEL_TENSOR.FFN_GATE, (0, f)), (gguf.MODEL_TENSOR.FFN_UP, (f, 2 * f))):
                out.append(Piece(_block_name(kind, it.index), (f,) + shape[1:], source, rows=rows))
            continue
        base = names.get_name(hf_name.removesuffix(".weight"))
        if base is None:  # a key map and gguf's name table out of step: a bug, not bad input
            raise AssertionError(f"gguf has no {gguf.MODEL_ARCH_NAMES[arch]} name for {hf_name}")
        heads = None
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = shape[0] // cfg.head_dim
        out.append(Piece(base + ".weight", shape, source, heads=heads))
    return out


def _block_name(kind, index: int) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=index) + ".weight"


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Rotate-half row order -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of `permute_rows` (transformers' GGUF loader's reverse permute)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def cut(piece: Piece, hf_arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """The piece's rows of its HF tensor (any row-wise array: weights, codes, scales)."""
    x = hf_arrays[piece.source]
    if piece.rows is not None:
        x = x[piece.rows[0]:piece.rows[1]]
    return permute_rows(x, piece.heads) if piece.heads else x


def join(pieces: list[Piece], arrays: list[np.ndarray], n_sources: int) -> tuple[np.ndarray, ...]:
    """Inverse of `cut` over all of an item's pieces: its HF tensors."""
    parts: list[list[np.ndarray]] = [[] for _ in range(n_sources)]
    for piece, x in zip(pieces, arrays):
        parts[piece.source].append(unpermute_rows(x, piece.heads) if piece.heads else x)
    return tuple(p[0] if len(p) == 1 else np.concatenate(p, axis=0) for p in parts)
