"""Quantize a saved model into a new model directory that `load_model` (generate, eval) reads directly
(`jaxlm quantize`).

The output is an ordinary model dir: config.yaml (with a `quant:` section saying how it was
quantized) + params/ (uint8 codes, float32 / float16 scales, uint8 zero points, and the unquantized rest) +
the tokenizer files. `load_model` sees the `quant:` section and restores into the quantized structure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxlm.checkpoint.locate import load_tokenizer_for, locate
from jaxlm.checkpoint.model_dir import load_model, save_model, tokenizer_files
from jaxlm.errors import JaxlmError
from jaxlm.outputs import check_output
from jaxlm.quant.calibration import DEFAULT_SOURCE, calibration_batches
from jaxlm.quant.config import QuantConfig
from jaxlm.quant.gptq import collect_hessians, gptq_quantize_fn
from jaxlm.quant.model import check_scheme, quantize_model


def quantize_model_dir(src: str | Path, out: str | Path, qcfg: QuantConfig, calib_source: str | Path | None = None,
                        overwrite: bool = False, log=print) -> Path:
    """Load `src` (model dir or run dir), quantize with `qcfg` (RTN or GPTQ), write the model dir `out`."""
    if not qcfg.enabled:
        raise JaxlmError("nothing to quantize: bits is 16 and embed_bits is 16; choose --bits 8, 4, 3 or 2")
    if calib_source is not None and not (qcfg.method == "gptq" and qcfg.bits < 16):  # it would be ignored
        raise JaxlmError(f"calibration text ({calib_source}) is only read by GPTQ; add --method gptq "
                         f"(method=\"gptq\"), or drop --calib")
    config_dir, _ = locate(src)
    inputs = [src, config_dir]
    out = check_output(out, overwrite=overwrite, inputs=inputs)
    run_cfg, model = load_model(src)
    if run_cfg.quant.enabled:
        raise JaxlmError(f"{src} is already quantized ({run_cfg.quant.bits}-bit); quantize the original "
                         f"16/32-bit checkpoint instead")
    if run_cfg.lora.enabled:
        raise JaxlmError(f"{src} holds LoRA adapters; merge them first with `jaxlm lora merge` and quantize that")
    check_scheme(model, qcfg)
    quantize_fn = None
    if qcfg.method == "gptq" and qcfg.bits < 16:
        seq_len = min(qcfg.calib_seq_len, run_cfg.model.max_context)
        batches = calibration_batches(load_tokenizer_for(src), calib_source or DEFAULT_SOURCE, qcfg.calib_batches,
                                      qcfg.calib_batch_size, seq_len, run_cfg.seed)
        log(f"GPTQ: collecting Hessians over {len(batches)} x {batches[0].shape} calibration tokens")
        quantize_fn = gptq_quantize_fn(collect_hessians(model, batches), qcfg.damp)
    quantize_model(model, qcfg, quantize_fn)
    new_cfg = dataclasses.replace(run_cfg, quant=qcfg)
    return save_model(out, new_cfg, model, extra_files=tokenizer_files(config_dir), overwrite=overwrite,
                      inputs=inputs)
