"""`to_gguf`: a jaxlm model or run directory -> one GGUF file for llama.cpp, one tensor at a time.

The tensors are the Hugging Face layout's (the family adapters' key maps and transforms), renamed
and rearranged as llama.cpp's converter does (gguf_layout), in the requested GGML type. GGUF puts
every tensor's name, shape and offset in the header, and those come from the plan (shapes only), so
the header is written first and each tensor's data follows as soon as it is converted.

A quantized jaxlm model (`jaxlm quantize`) is written from its stored codes where its scheme is a
GGUF type (gguf_quant: int4 group 32 -> q4_0 / q4_1, int8 group 32 -> q8_0); any other weight is
dequantized and quantized again into the requested type, and a note names it.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

from jaxlm import outputs
from jaxlm.checkpoint.locate import locate
from jaxlm.checkpoint.model_dir import read_config
from jaxlm.checkpoint.params_io import ParamReader
from jaxlm.convert.family import family_for_model
from jaxlm.convert.gguf_layout import Piece, arch_name, cut, gguf_plan
from jaxlm.convert.gguf_meta import extra_tensors, write_metadata
from jaxlm.convert.gguf_quant import (
    CODE_TYPES,
    QTYPES,
    Codes,
    blocks_from_codes,
    encode,
    head_name,
    nbytes,
    tensor_type,
)
from jaxlm.convert.gguf_vocab import GGUFVocab, vocab_from_tokenizer
from jaxlm.convert.plan import Item, saved_path
from jaxlm.errors import JaxlmError
from jaxlm.model.layout import BLOCK_WEIGHTS
from jaxlm.model.layouts import is_per_layer
from jaxlm.tokenizer import check_vocab, load_tokenizer

SAVED_TYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
QUANT_PARTS = ("codes", "scale", "zero")


def to_gguf(src: str | Path, out: str | Path, *, type_name: str | None = None, tokenizer: bool = True,
            overwrite: bool = False, log=print) -> Path:
    """Write `out` (a .gguf file) from a model dir, a run dir (latest step) or RUN_DIR/checkpoints/<step>.

    type_name: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 for the 2-D weights (1-D ones stay float32);
    default: the saved float dtype, or the GGUF type a quantized model's codes go into. tokenizer:
    embed the model's tokenizer (llama.cpp needs one to run the file). Peak memory: about one tensor.
    """
    config_dir, params_dir = locate(src)
    run_cfg = read_config(config_dir)
    if run_cfg.lora.enabled:
        raise JaxlmError(f"{src} holds LoRA adapters; fold them in with `jaxlm lora merge` and export that")
    cfg, quant = run_cfg.model, run_cfg.quant
    family = family_for_model(cfg)
    writer = gguf.GGUFWriter(None, arch_name(family))
    out = outputs.check_output(out, overwrite=overwrite, inputs=[src, config_dir], folder=False)
    reader = ParamReader(params_dir)
    layered = is_per_layer(reader.shapes)
    type_name = type_name or _default_type(run_cfg, reader)
    if type_name not in QTYPES:
        raise JaxlmError(f"unknown GGUF type {type_name!r}; choose one of {', '.join(QTYPES)}")
    plan, extras = gguf_plan(family, cfg), extra_tensors(family, cfg)
    vocab = _vocab(config_dir, cfg.vocab_size) if tokenizer else GGUFVocab("none")
    n_params = sum(math.prod(p.shape) for _, pieces in plan for p in pieces)
    write_metadata(writer, family, cfg, type_name, n_params, vocab.tokens)
    vocab.write(writer)
    types = _add_tensor_infos(writer, plan, extras, lambda it: _item_type(it, reader, layered, quant, type_name),
                              head_name(cfg.tie_embeddings))
    notes = _Notes(type_name, quant)
    data = (x for it, pieces in plan for x in _item_data(reader, it, pieces, layered, types, run_cfg, notes))
    with outputs.output_path(out, checked=True, folder=False) as tmp:
        _write_file(writer, tmp, [x for _, x in extras], data)
    for line in notes.lines(family.model_type, cfg):
        log(line)
    return out


def _add_tensor_infos(writer: gguf.GGUFWriter, plan, extras, item_type, head: str) -> dict:
    """Every tensor's name, shape and type into the header; {name: GGML type}. Checks every tensor's
    type (a row length its blocks do not divide) before anything is written. `head`: the output head's name."""
    for name, x in extras:
        writer.add_tensor_info(name, x.shape, x.dtype, x.nbytes)
    types = {}
    for it, pieces in plan:
        for p in pieces:
            qtype = types[p.name] = tensor_type(p.name, p.shape, item_type(it), head)
            writer.add_tensor_info(p.name, _byte_shape(p.shape, qtype), _np_dtype(qtype), nbytes(p.shape, qtype),
                                   raw_dtype=qtype)
    return types


def _write_file(writer: gguf.GGUFWriter, path: Path, extras: list[np.ndarray], data) -> None:
    """Header, keys and tensor index, then each tensor's data as `data` yields it (in the index's order)."""
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for x in extras:
            writer.write_tensor_data(x)
        for x in data:
            writer.write_tensor_data(x)
    finally:
        writer.close()


def _default_type(run_cfg, reader: ParamReader) -> str:
    quant = run_cfg.quant
    if quant.bits < 16:
        return CODE_TYPES.get((quant.bits, quant.symmetric), "q8_0" if quant.bits == 8 else "q4_0")
    dtypes = {str(dt) for _, dt in reader.shapes.values() if str(dt) in SAVED_TYPES}
    return SAVED_TYPES[dtypes.pop()] if len(dtypes) == 1 else "f32"


def _item_type(it: Item, reader: ParamReader, layered: bool, quant, type_name: str) -> str:
    """The type of an item's 2-D tensors: `type_name`, except that a quantized model keeps the embeddings and
    output head as they are stored (float, or int8 rows -> q8_0), so that its layer weights can go in
    losslessly while the rest stays as jaxlm runs it."""
    if quant.bits == 16 or ".".join(it.rule.leaf) in BLOCK_WEIGHTS:
        return type_name
    if quant.embed_bits == 8:
        return "q8_0"
    return SAVED_TYPES.get(str(reader.shapes[saved_path(it, layered)][1]), "f32")


def _vocab(config_dir: Path, vocab_size: int) -> GGUFVocab:
    try:
        tok = load_tokenizer(config_dir)
    except JaxlmError:
        raise JaxlmError(f"{config_dir} has no tokenizer, and llama.cpp needs one to run the file; save the model with "
                         f"its tokenizer, or pass --no-tokenizer to export the weights alone") from None
    check_vocab(vocab_size, tok)
    return vocab_from_tokenizer(tok, vocab_size)


def _byte_shape(shape: tuple[int, ...], qtype) -> tuple[int, ...]:
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return shape
    return shape[:-1] + (nbytes(shape, qtype) // max(1, math.prod(shape[:-1])),)


def _np_dtype(qtype) -> np.dtype:
    return {gguf.GGMLQuantizationType.F32: np.dtype(np.float32),
            gguf.GGMLQuantizationType.F16: np.dtype(np.float16)}.get(qtype, np.dtype(np.uint8))


def _read(reader: ParamReader, it: Item, layered: bool, part: tuple[str, ...] = ()) -> np.ndarray:
    """The item's saved tensor (or a part of a quantized one: codes / scale / zero), one layer's worth."""
    if layered or it.layer is None:
        return reader.read(saved_path(it, layered) + part)
    return reader.read_layer(it.jax_path + part, it.layer)


def _item_data(reader, it: Item, pieces: list[Piece], layered: bool, types: dict, run_cfg, notes):
    """Each piece's tensor data, in order: from the stored codes where they fit the piece's type, else from
    float weights (dequantized first when the model is quantized)."""
    path = saved_path(it, layered) if layered or it.layer is None else it.jax_path
    if path in reader.shapes:
        hf = it.rule.transform.to_hf(_read(reader, it, layered))
        for p in pieces:
            yield encode(cut(p, hf), types[p.name])
        return
    if path + ("codes",) not in reader.shapes:
        raise JaxlmError(f"{'.'.join(path)} is missing from the checkpoint; re-save the model")
    parts = {k: _read(reader, it, layered, (k,)) for k in QUANT_PARTS if path + (k,) in reader.shapes}
    type_name = next(k for k, v in QTYPES.items() if v == types[pieces[0].name])
    codes = _codes_in_rows(it, parts, run_cfg.quant, type_name)
    if codes is not None:
        for p in pieces:
            yield blocks_from_codes(Codes(*(None if a is None else cut(p, a) for a in codes), bits=run_cfg.quant.bits),
                                    type_name)
        return
    name = ".".join(it.rule.leaf) if it.layer is None else f"layer {it.index} {'.'.join(it.rule.leaf)}"
    notes.requantized.append(f"{name} -> {type_name}")
    hf = it.rule.transform.to_hf(_dequantize(it, parts, run_cfg))
    for p in pieces:
        yield encode(cut(p, hf), types[p.name])


def _weight_dims(it: Item) -> tuple[int, int, bool]:
    """(input dims, output dims, stored as (out, in)) of a quantized jaxlm weight."""
    name = ".".join(it.rule.leaf)
    if name in BLOCK_WEIGHTS:
        return (*BLOCK_WEIGHTS[name].dims, False)
    return 1, 1, name == "embed"  # the (V, D) table is quantized as its transpose; lm_head is (D, V)


def _codes_in_rows(it: Item, parts: dict, quant, type_name: str):
    """(codes, scale, zero) as HF-layout row arrays when the weight's stored scheme is `type_name`'s block
    format (group 32 along the input dim), else None."""
    # lazy: JAX (jaxlm.quant) loads only for quantized models
    from jaxlm.quant import formats

    n_in, _, transposed = _weight_dims(it)
    if transposed or ".".join(it.rule.leaf) not in BLOCK_WEIGHTS:
        return None
    k = math.prod(it.jax_shape[:n_in])
    if k // parts["scale"].shape[-2] != 32 or CODE_TYPES.get((quant.bits, quant.symmetric)) != type_name:
        return None
    logical = it.jax_shape
    codes = np.asarray(formats.unpack(parts["codes"], quant.bits))

    def rows(a: np.ndarray, per_group: bool) -> tuple[np.ndarray, ...]:
        full = np.repeat(a, 32, axis=-2) if per_group else a  # (K, N): the transforms need whole rows
        hf = it.rule.transform.to_hf(full.reshape(logical))
        return tuple(x[:, ::32] if per_group else x for x in hf)

    zero = rows(parts["zero"], True) if "zero" in parts else None
    return rows(codes, False), rows(parts["scale"], True), zero


def _dequantize(it: Item, parts: dict, run_cfg) -> np.ndarray:
    """The float weight (jaxlm layout) a quantized leaf stands for."""
    # lazy: JAX (jaxlm.quant) loads only for quantized models
    from jaxlm.quant import formats

    quant = run_cfg.quant
    n_in, n_out, transposed = _weight_dims(it)
    block = ".".join(it.rule.leaf) in BLOCK_WEIGHTS
    scheme = formats.Scheme(quant.bits, None, quant.symmetric) if block else formats.Scheme(8, None, True)
    mat = np.asarray(formats.dequantize(parts["codes"], parts["scale"], parts.get("zero"), scheme))  # (K, N)
    return (mat.T if transposed else mat).reshape(it.jax_shape)


class _Notes:
    """What the export could not keep exactly, said once at the end."""

    def __init__(self, type_name: str, quant):
        self.type_name, self.quant, self.requantized = type_name, quant, []

    def lines(self, model_type: str, cfg) -> list[str]:
        out = []
        if self.requantized:
            shown = ", ".join(self.requantized[:4]) + (" ..." if len(self.requantized) > 4 else "")
            out.append(f"note: {len(self.requantized)} quantized weight(s) are not stored in the GGUF type written "
                       f"(int4 group 32 -> q4_0 / q4_1, int8 group 32 -> q8_0) and were dequantized and quantized "
                       f"again: {shown}")
        kept = self.quant.bits < 16
        if kept and self.type_name == "q8_0" and self.quant.bits == 8:
            out.append("note: q8_0 keeps the int8 codes; its float16 scales round jaxlm's float32 ones "
                       "(relative error <= 2^-11)")
        if kept and self.type_name == "q4_1" and self.quant.bits == 4 and not self.quant.symmetric:
            out.append("note: q4_1 keeps the int4 codes and scales; its float16 block minimum -zero*scale is rounded "
                       "(error <= 2^-11 of it, under 1% of a quantization step)")
        if model_type == "phi3" and cfg.sliding_window:
            out.append(f"note: the file records Phi-3's {cfg.sliding_window}-token sliding window, which llama.cpp "
                       f"currently ignores (full attention): outputs differ past {cfg.sliding_window} tokens")
        return out


def size_from_shapes(cfg, type_name: str) -> dict:
    """Bytes of the GGUF file `to_gguf` writes for a float model of config `cfg`, from shapes alone: the
    tensor data with its alignment, the tensor index and the model keys (the tokenizer's keys excluded)."""
    family = family_for_model(cfg)
    arch_name(family)
    align = gguf.GGUF_DEFAULT_ALIGNMENT
    tensors = [(n, x.shape, gguf.GGMLQuantizationType.F32) for n, x in extra_tensors(family, cfg)]
    for _, pieces in gguf_plan(family, cfg):
        tensors += [(p.name, p.shape, tensor_type(p.name, p.shape, type_name, head_name(cfg.tie_embeddings)))
                    for p in pieces]
    data = sum(-(-nbytes(s, q) // align) * align for _, s, q in tensors)
    index = sum(8 + len(n) + 4 + 8 * len(s) + 4 + 8 for n, s, _ in tensors)
    weights = sum(math.prod(s) for _, s, _ in tensors)
    keys = 2048  # general.* and {arch}.* keys: under 2 KiB
    return {"tensor_bytes": data, "total_bytes": data + index + keys + 24, "weights": weights,
            "bits_per_weight": 8 * data / weights}
