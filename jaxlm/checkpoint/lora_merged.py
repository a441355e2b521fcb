"""A LoRA run's adapters folded into its base and written as a plain model dir (`jaxlm lora merge`),
and the loading both `lora merge` and `lora export` start from. The merge itself (W + (alpha / r) A B)
is `jaxlm.lora.adapters.merge_lora`; this module reads and writes the model dirs around it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.checkpoint.locate import locate
from jaxlm.checkpoint.model_dir import load_model, save_model, tokenizer_files
from jaxlm.errors import JaxlmError
from jaxlm.lora.adapters import has_lora, merge_lora
from jaxlm.lora.config import LoraConfig
from jaxlm.outputs import check_output
from jaxlm.quant.config import QuantConfig
from jaxlm.quant.model import dequantize_model


def load_lora_model(path: str | Path):
    """(run config, model) of a LoRA run dir or model dir; a clear error when it has no adapters."""
    run_cfg, model = load_model(path)
    if not has_lora(model):
        raise JaxlmError(f"{path} has no LoRA adapters (its config has no enabled `lora:` section)")
    return run_cfg, model


def write_merged(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write W + (alpha / r) A B of every adapted weight into a model dir at `out`: a plain float model
    (a quantized base is dequantized first), with the run's tokenizer files. `out` is written atomically
    and is refused when it would overlap the input."""
    config_dir = locate(ckpt)[0]
    check_output(out, overwrite=overwrite, inputs=[ckpt, config_dir])  # before loading anything
    run_cfg, model = load_lora_model(ckpt)
    merge_lora(model)
    dequantize_model(model)
    plain = dataclasses.replace(run_cfg, lora=LoraConfig(), quant=QuantConfig())
    return save_model(out, plain, model, extra_files=tokenizer_files(config_dir), overwrite=overwrite,
                      inputs=[ckpt, config_dir])
