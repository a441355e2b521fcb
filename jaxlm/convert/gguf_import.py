"""`from_gguf`: a GGUF file (llama, phi3 or openelm) -> a jaxlm model directory, one tensor at a time.

Each GGUF tensor is read from the memory-mapped file, dequantized by the gguf library (any type it
knows), put back into the Hugging Face layout (gguf_layout.join: llama's q/k rows un-permuted,
OpenELM's gate and up joined) and through the family adapter's transform into its jaxlm leaf.
With `keep_quantized`, q8_0 / q4_0 / q4_1 layer weights become jaxlm int8 / int4 weights (group
32) from their codes instead (gguf_quant.codes_from_blocks); embeddings and the output head stay float.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import gguf
import numpy as np

from jaxlm import outputs
from jaxlm.checkpoint.model_dir import write_model_dir
from jaxlm.config import RunConfig, from_dict
from jaxlm.convert.family import families
from jaxlm.convert.gguf_layout import ROPE_FREQS, ROPE_LONG, ROPE_SHORT, Piece, gguf_plan, join
from jaxlm.convert.gguf_meta import config_from_gguf, read_fields
from jaxlm.convert.gguf_quant import Q, codes_from_blocks, decode, offset_error
from jaxlm.convert.gguf_vocab import GGUFVocab, tokenizer_from_vocab
from jaxlm.convert.plan import Item, saved_path
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.model.layout import BLOCK_WEIGHTS
from jaxlm.tokenizer import check_vocab

EXTRAS = (ROPE_FREQS, ROPE_LONG, ROPE_SHORT)
KEPT = {Q.Q8_0: (8, True), Q.Q4_0: (4, True), Q.Q4_1: (4, False)}  # GGUF type -> jaxlm (bits, symmetric)
FLOAT_DTYPES = {Q.BF16: "bfloat16", Q.F16: "float16"}


def from_gguf(path: str | Path, out: str | Path, *, keep_quantized: bool = False, overwrite: bool = False,
              log=print) -> Path:
    """Write a model dir (config.yaml, params/, tokenizer files) that `jaxlm.checkpoint.load_model` reads."""
    path = Path(path)
    reader = open_gguf(path)
    fields = read_fields(reader)
    tensors = {t.name: t for t in reader.tensors}
    shapes = {name: tuple(int(n) for n in reversed(t.shape)) for name, t in tensors.items()}
    rope = {n: decode(tensors[n].data, tensors[n].tensor_type, shapes[n]) for n in EXTRAS if n in tensors}
    section = config_from_gguf(fields, rope, shapes)
    arch = section["name"]
    family = families()[arch]
    section["name"] = f"{arch}_{_slug(fields.get('general.name') or path.stem)}"  # the family leads, as from_hf
    section["param_dtype"] = section["compute_dtype"] = _float_dtype(tensors)
    quant = _quant_section(tensors) if keep_quantized else {}
    try:
        run_cfg = from_dict(RunConfig, {"model": section, "quant": quant})
    except JaxlmError as e:
        raise JaxlmError(f"{path}'s metadata describes a model jaxlm cannot build: {e}") from None
    out = outputs.check_output(out, overwrite=overwrite, inputs=[path])
    plan = gguf_plan(family, run_cfg.model)
    _check_tensors(plan, shapes, path)
    leaves = _leaves(plan, tensors, run_cfg, log)
    with tempfile.TemporaryDirectory() as tok_dir:
        files = _tokenizer_files(fields, run_cfg.model.vocab_size, Path(tok_dir), path, log)
        write_model_dir(out, run_cfg, leaves, files, overwrite=True, inputs=[path])
    return out


def open_gguf(path: Path) -> gguf.GGUFReader:
    """The gguf library's reader, with a damaged or truncated file named in one line."""
    if not path.is_file():
        raise JaxlmError(f"GGUF file {path} does not exist; give a .gguf file")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as e:
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        if "GGMLQuantizationType" in detail:
            raise JaxlmError(f"{path} holds a tensor type the gguf library does not know ({detail}); upgrade the "
                             f"gguf package or requantize the file with llama.cpp to q8_0, q4_0 or f16") from None
        raise JaxlmError(f"{path} is not a complete GGUF file ({detail}); it may be truncated: download or "
                         f"convert it again") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise JaxlmError(f"{path} is truncated: tensor {t.name} ends past the end of the file; download or "
                             f"convert it again")
    return reader


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-") or "gguf"


def _float_dtype(tensors: dict) -> str:
    """float32 unless every 2-D weight is stored as bf16 (or every one as f16)."""
    kinds = {FLOAT_DTYPES.get(t.tensor_type, "float32") for t in tensors.values() if len(t.shape) > 1}
    return kinds.pop() if len(kinds) == 1 else "float32"


def _quant_section(tensors: dict) -> dict:
    """The jaxlm `quant:` section the layer weights' one GGUF type maps onto."""
    kinds = {t.tensor_type for name, t in tensors.items() if name.startswith("blk.") and len(t.shape) > 1}
    if len(kinds) != 1 or next(iter(kinds)) not in KEPT:
        names = ", ".join(sorted(k.name.lower() for k in kinds))
        raise JaxlmError(f"--keep-quantized needs every layer weight in one of q8_0, q4_0, q4_1; this file has "
                         f"{names}: convert it without --keep-quantized (float weights)")
    bits, symmetric = KEPT[kinds.pop()]
    return {"bits": bits, "group_size": 32, "symmetric": symmetric}


def _check_tensors(plan, shapes: dict, path: Path) -> None:
    want = {p.name: p.shape for _, pieces in plan for p in pieces}
    have = set(shapes) - set(EXTRAS)
    missing, extra = sorted(set(want) - have), sorted(have - set(want))
    if missing:
        raise JaxlmError(f"{path} lacks {len(missing)} tensor(s) its metadata implies: {', '.join(missing[:6])}")
    if extra:
        raise JaxlmError(f"{path} holds {len(extra)} tensor(s) jaxlm has no place for: {', '.join(extra[:6])}")
    for name, shape in want.items():
        if shapes[name] != shape:
            raise JaxlmError(f"{path}: tensor {name} has shape {list(shapes[name])}, "
                             f"its metadata implies {list(shape)}")


def _leaves(plan, tensors: dict, run_cfg, log):
    """(model dir leaf path, array), one jaxlm tensor at a time, in plan order."""
    worst = 0.0
    for it, pieces in plan:
        name = ".".join(it.rule.leaf)
        if run_cfg.quant.bits < 16 and name in BLOCK_WEIGHTS:
            leaves, err = _quantized_leaves(it, pieces, tensors, run_cfg.quant.bits)
            worst = max(worst, err)
            yield from leaves
            continue
        arrays = [decode(tensors[p.name].data, tensors[p.name].tensor_type, p.shape) for p in pieces]
        value = it.rule.transform.from_hf(join(pieces, arrays, len(it.hf_names)), it.jax_shape)
        yield saved_path(it, layered=True), _cast(value, run_cfg.model.param_dtype)
    if worst > 0.01:  # float16 rounding of a jaxlm-written minimum stays under 15 * 2^-11 steps
        log(f"note: q4_1 block minimums lie up to {worst:.3f} quantization steps from a whole zero point; jaxlm's "
            f"int4 zero points are integers, so the import moved those blocks' weights by up to that much")


def _cast(value: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return value.astype(np.float32, copy=False)
    # lazy: ml_dtypes (bfloat16 for numpy) loads only for 16-bit files
    import ml_dtypes

    return value.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)


def _quantized_leaves(it: Item, pieces: list[Piece], tensors: dict, bits: int):
    """The codes / scale / zero leaves of a jaxlm quantized weight, from GGUF blocks (no rounding)."""
    # lazy: JAX (jaxlm.quant) loads only for --keep-quantized
    from jaxlm.quant import formats

    parts = [codes_from_blocks(tensors[p.name].data, tensors[p.name].tensor_type, p.shape) for p in pieces]
    err = max((offset_error(tensors[p.name].data, c) for p, c in zip(pieces, parts)
               if tensors[p.name].tensor_type == Q.Q4_1), default=0.0)
    n = len(it.hf_names)

    def matrix(rows: list[np.ndarray], per_group: bool) -> np.ndarray:
        """HF row arrays -> jaxlm (K, N) (or (K / 32, N) per group)."""
        full = [np.repeat(r, 32, axis=-1) for r in rows] if per_group else rows
        x = it.rule.transform.from_hf(join(pieces, full, n), it.jax_shape)
        k = int(np.prod(it.jax_shape[:BLOCK_WEIGHTS[".".join(it.rule.leaf)].dims[0]]))
        mat = x.reshape(k, -1)
        return mat[::32] if per_group else mat

    base = saved_path(it, layered=True)
    leaves = [(base + ("codes",), np.asarray(formats.pack(matrix([c.codes for c in parts], False), bits))),
              (base + ("scale",), matrix([c.scale for c in parts], True).astype(formats.scale_dtype(bits)))]
    if parts[0].zero is not None:
        leaves.append((base + ("zero",), matrix([c.zero for c in parts], True)))
    return leaves, err


def _tokenizer_files(fields: dict, vocab_size: int, tmp: Path, path: Path, log) -> list[Path]:
    vocab = GGUFVocab.read(fields)
    if vocab is None:
        log(f"note: {path} holds no tokenizer; the model dir has none (give generate a --tokenizer)")
        return []
    tok = tokenizer_from_vocab(vocab)
    try:
        check_vocab(vocab_size, tok)
    except ConfigError:
        raise JaxlmError(f"{path}'s tokenizer has {tok.vocab_size} ids but token_embd has {vocab_size} rows; the file "
                         f"is inconsistent: convert it again") from None
    return tok.save(tmp)
