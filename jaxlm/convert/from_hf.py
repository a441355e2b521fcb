"""`from_hf`: a Hugging Face model folder (Llama, Phi-3, OpenELM) -> a jaxlm model directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from jaxlm import outputs
from jaxlm.checkpoint.model_dir import write_model_dir
from jaxlm.config import RunConfig, from_dict
from jaxlm.convert import hf_io
from jaxlm.convert.family import Family, family_for_hf
from jaxlm.convert.plan import make_plan, saved_path
from jaxlm.convert.to_hf import DTYPES
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.tokenizer import check_vocab, load_tokenizer
from jaxlm.tokenizer.hf_json import GENERATION_FILE, read_hf_config


def from_hf(hf_dir: str | Path, out: str | Path, *, dtype: str | None = None, allow_pickle: bool = False,
            overwrite: bool = False) -> Path:
    """Write a model dir loadable by `jaxlm.checkpoint.load_model`. dtype: of the jaxlm params and
    compute (default: the checkpoint's). Only safetensors are read unless `allow_pickle`.
    Streams: one tensor at a time, written to the model dir's per-layer leaves."""
    hf_dir = Path(hf_dir)
    hf_config = hf_io.read_config(hf_dir)
    family = family_for_hf(hf_config)
    try:
        section = family.config_from_hf(hf_config)
    except KeyError as e:
        raise JaxlmError(f"{hf_dir / 'config.json'} lacks the key {e.args[0]!r} that the {family.model_type} "
                         f"layout needs; use the config.json saved with the weights") from None
    except (TypeError, ValueError, IndexError, AttributeError) as e:
        raise JaxlmError(f"{hf_dir / 'config.json'} has a value of the wrong type ({e}); use the config.json "
                         f"saved with the weights") from None
    out = outputs.check_output(out, overwrite=overwrite, inputs=[hf_dir])
    reader = hf_io.HFReader(hf_dir, allow_pickle=allow_pickle)
    if dtype is not None and dtype not in DTYPES:
        raise JaxlmError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    first = family.top[0].hf[0]
    saved = reader.dtype(first) if first in reader.keys() else np.dtype(np.float32)
    dtype = dtype or {v: k for k, v in DTYPES.items()}.get(saved, "float32")
    # The family leads the name, so that `to_hf` picks the same layout again (e.g. phi3_Phi-3-mini-4k).
    section.update(name=f"{family.model_type}_{hf_dir.absolute().name}", param_dtype=dtype, compute_dtype=dtype)
    try:
        run_cfg = from_dict(RunConfig, {"model": section})
    except JaxlmError as e:
        raise JaxlmError(f"{hf_dir / 'config.json'} describes an invalid model: {e}") from None
    cfg = run_cfg.model
    plan = make_plan(family, cfg)
    _check_tensors(reader, plan, family, cfg.tie_embeddings)
    with tempfile.TemporaryDirectory() as tok_dir:
        tok_files = _tokenizer_files(hf_dir, Path(tok_dir), cfg.vocab_size)  # one that does not fit fails here
        write_model_dir(out, run_cfg, _leaves(reader, plan, DTYPES[dtype]), tok_files, overwrite=True,
                        inputs=[hf_dir])
    return out


def _leaves(reader: hf_io.HFReader, plan, dtype: np.dtype):
    """(model dir leaf path, array), one jaxlm tensor at a time in HF order: a model dir stores each
    layer's tensors as their own leaves, so memory holds one tensor and the HF tensors it comes from."""
    for it in plan:
        value = it.rule.transform.from_hf(tuple(reader.get(n) for n in it.hf_names), it.jax_shape)
        yield saved_path(it, layered=True), value.astype(dtype, copy=False)
        del value


def _check_tensors(reader: hf_io.HFReader, plan, family: Family, tied: bool) -> None:
    """Missing / extra tensors and shape mismatches, each named."""
    want = {n: s for it in plan for n, s in zip(it.hf_names, it.hf_shapes)}
    have = [k for k in reader.keys() if not k.endswith(family.ignored_suffixes)]
    extra = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have), key=_natural)
    if missing:  # first: the tied-head comparison below reads the embedding
        raise JaxlmError(f"{len(missing)} tensor(s) the config implies are missing from the checkpoint: "
                         f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if tied and extra == ["lm_head.weight"]:  # some tied checkpoints still store the head
        embed = family.top[0].hf[0]
        if np.array_equal(reader.get("lm_head.weight"), reader.get(embed)):
            extra = []
        else:
            raise JaxlmError("config.json ties the embeddings but lm_head.weight differs from "
                             f"{embed}; set tie_word_embeddings false in config.json")
    if extra:
        raise JaxlmError(f"{len(extra)} unexpected tensor(s) in the checkpoint (not in the {family.model_type} "
                         f"layout for this config): {', '.join(sorted(extra, key=_natural)[:6])}"
                         f"{' ...' if len(extra) > 6 else ''}")
    for name, shape in want.items():
        got = reader.shape(name)
        if got != tuple(shape):
            raise JaxlmError(f"shape mismatch for {name}: checkpoint has {list(got)}, config.json implies "
                             f"{list(shape)}")


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _tokenizer_files(hf_dir: Path, tmp: Path, vocab_size: int) -> list[Path]:
    """The folder's tokenizer, re-saved by jaxlm's tokenizer so the model dir reads back with
    `load_tokenizer`: tokenizer.json (with tokenizer_config.json and special_tokens_map.json, as
    AutoTokenizer reads them first), else tokenizer.model (sentencepiece) or original/tokenizer.model
    (Llama 3 tiktoken). The folder's tokenizer_config.json (chat template) and generation_config.json
    (eos ids: a chat model's end-of-turn tokens) come along. A tokenizer whose ids do not fit the
    embedding's `vocab_size` rows is refused (generate would index past the table)."""
    files = []
    if (hf_dir / GENERATION_FILE).is_file():
        files.append(hf_dir / GENERATION_FILE)
    for candidate in (hf_dir / "tokenizer.json", hf_dir / "tokenizer.model", hf_dir / "original" / "tokenizer.model"):
        if candidate.is_file():
            try:
                tok = load_tokenizer(candidate)
            except JaxlmError:
                if candidate.name == "tokenizer.json":
                    raise  # AutoTokenizer would read it: a damaged one is named, not skipped
                continue
            try:
                check_vocab(vocab_size, tok)
            except ConfigError:
                raise JaxlmError(f"{candidate} has {tok.vocab_size} ids but the embedding has {vocab_size} rows "
                                 f"(vocab_size in {hf_dir / 'config.json'}); convert the tokenizer saved with "
                                 f"these weights") from None
            if tok.kind != "hf":
                tok.hf_config = read_hf_config(hf_dir)
            return files + tok.save(tmp)
    return files
