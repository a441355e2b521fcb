"""`to_hf`: a jaxlm model or run directory -> a Hugging Face model folder, one tensor at a time."""

from __future__ import annotations

import json
import shutil
from itertools import groupby
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxlm import outputs
from jaxlm.checkpoint.locate import locate
from jaxlm.checkpoint.model_dir import read_config
from jaxlm.checkpoint.params_io import ParamReader
from jaxlm.convert import hf_code, hf_io
from jaxlm.convert.family import family_for_model
from jaxlm.convert.plan import make_plan, saved_path
from jaxlm.errors import JaxlmError
from jaxlm.model.layouts import is_per_layer
from jaxlm.tokenizer import load_tokenizer
from jaxlm.tokenizer.hf_export import write_hf_tokenizer
from jaxlm.tokenizer.hf_json import GENERATION_FILE, read_json

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}


def to_hf(src: str | Path, out: str | Path, *, fmt: str | None = None, dtype: str | None = None,
          max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    """Write config.json, generation_config.json, safetensors weights and tokenizer files to `out`
    (and, for OpenELM, the model code that transformers loads with trust_remote_code).

    src: a model dir, a run dir (latest step) or RUN_DIR/checkpoints/<step>. fmt: llama | phi3 |
    openelm (default: uniform -> llama, LongRoPE -> phi3, otherwise openelm). dtype: of the written
    weights (default: as saved). Peak memory is about one tensor plus its converted copy: model dirs
    store each layer on its own, training checkpoints store stacked layers one layer per chunk.
    """
    max_shard_bytes = hf_io.parse_size(max_shard_size)  # a bad size fails before any work
    config_dir, params_dir = locate(src)
    run_cfg = read_config(config_dir)
    quant = run_cfg.quant
    if quant.enabled:  # the HF layouts hold float weights, and quantizing cannot be undone
        bits = f"{quant.bits}-bit" if quant.bits < 16 else f"{quant.embed_bits}-bit embeddings"
        raise JaxlmError(f"{src} is a quantized model ({bits}); Hugging Face exports are float: export the float "
                         f"model it was quantized from instead")
    cfg = run_cfg.model
    family = family_for_model(cfg, fmt)
    hf_config = family.config_to_hf(cfg)
    out = outputs.check_output(out, overwrite=overwrite, inputs=[src, config_dir])
    plan = make_plan(family, cfg)
    reader = ParamReader(params_dir)
    layered = is_per_layer(reader.shapes)
    _check_saved(reader, plan, params_dir, layered)
    saved = {reader.shapes[saved_path(it, layered)][1] for it in plan}
    if dtype is not None and dtype not in DTYPES:
        raise JaxlmError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out_dtype = DTYPES[dtype] if dtype else saved.pop() if len(saved) == 1 else np.dtype(np.float32)
    writer = None
    with outputs.output_path(out, checked=True) as tmp:
        try:
            entries = [(n, s, out_dtype) for it in plan for n, s in zip(it.hf_names, it.hf_shapes)]
            writer = hf_io.ShardedWriter(tmp, entries, max_shard_bytes)
            for path, items in groupby(sorted(plan, key=lambda it: it.jax_path), key=lambda it: it.jax_path):
                items = list(items)
                # A model dir holds each layer as its own leaf; a training checkpoint holds a group's layers
                # stacked, read one layer at a time where it is stored one layer per chunk, else whole once.
                per_leaf = layered or items[0].layer is None or reader.layer_chunked(path)
                whole = None if per_leaf else reader.read(path)
                for it in items:
                    if whole is not None:
                        x = whole[it.layer]
                    elif layered or it.layer is None:
                        x = reader.read(saved_path(it, layered))
                    else:
                        x = reader.read_layer(path, it.layer)
                    for name, t in zip(it.hf_names, it.rule.transform.to_hf(x)):
                        writer.write(name, t.astype(out_dtype, copy=False))
                    del x
                del whole
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        hf_config["torch_dtype"] = hf_config["dtype"] = {v: k for k, v in DTYPES.items()}[out_dtype]
        for name in family.code_files:  # remote code that config.json's auto_map names
            shutil.copyfile(hf_code.code_path(name), tmp / name)
            hf_config["jaxlm_code_version"] = hf_code.code_version(name)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        # A model dir made by from-hf keeps its source's generation_config.json (e.g. Llama 3 Instruct's
        # list of eos ids, <|eot_id|> among them): it goes back out as it came.
        generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": False}
        generation.update(read_json(config_dir / GENERATION_FILE))
        (tmp / GENERATION_FILE).write_text(json.dumps(generation, indent=2))
        write_tokenizer(config_dir, tmp, cfg.max_context)
    return out


def _check_saved(reader: ParamReader, plan, params_dir: Path, layered: bool) -> None:
    """The checkpoint must hold exactly the leaves (and shapes) the config implies."""
    want = {}
    for it in plan:
        path = saved_path(it, layered)
        stacked = it.layer is not None and not layered
        want.setdefault(path, (stacked, it.jax_shape))
    have = set(reader.shapes)
    extra = sorted(".".join(p) for p in have - set(want))
    missing = sorted(".".join(p) for p in set(want) - have)
    if extra:
        raise JaxlmError(f"{params_dir} holds parameters the HF layout has no place for: {', '.join(extra[:8])} "
                         f"(LoRA adapters? fold them in first with `jaxlm lora merge`)")
    if missing:
        raise JaxlmError(f"{params_dir} lacks parameters its config implies: {', '.join(missing[:8])}")
    for path, (stacked, shape) in want.items():
        got = reader.shapes[path][0][1:] if stacked else reader.shapes[path][0]
        if got != shape:
            raise JaxlmError(f"{'.'.join(path)}: saved shape {got} but the config implies {shape}")


def write_tokenizer(config_dir: Path, out: Path, model_max_length: int) -> None:
    """The run's tokenizer: its own files (a sentencepiece tokenizer.model at the top, as
    Llama/OpenELM/Phi-3 repos ship it; a tiktoken rank file under original/, as Meta's Llama 3 repos
    ship theirs), then tokenizer.json, tokenizer_config.json and special_tokens_map.json for
    AutoTokenizer (jaxlm.tokenizer.hf_export)."""
    try:
        tok = load_tokenizer(config_dir)
    except JaxlmError:
        return
    if tok.kind != "hf":
        tok.save(out if tok.kind == "sentencepiece" else out / "original")
    write_hf_tokenizer(tok, out, model_max_length)
