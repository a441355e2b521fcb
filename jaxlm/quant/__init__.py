"""Weight-only post-training quantization: formats, RTN and GPTQ, quantized model dirs, storage accounting.

Everything but QuantConfig loads lazily: reading a config must not pay for importing flax and jax.
"""

from jaxlm.quant.config import QuantConfig

_LAZY = {"Scheme": "formats", "abstract_quantized": "model", "quantize_model": "model",
         "storage_report": "model", "QuantizedWeight": "qweight"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"jaxlm.quant.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxlm.quant' has no attribute {name!r}")

__all__ = ["QuantConfig", "QuantizedWeight", "Scheme", "abstract_quantized", "quantize_model", "storage_report",
           "abstract_base_model"]


def abstract_base_model(run_cfg):
    """The model structure (ShapeDtypeStruct leaves) of `run_cfg` before any LoRA: quantized when its
    `quant:` section is enabled. What a trainer or loader should restore into."""
    from jaxlm.model import abstract_model
    from jaxlm.quant.model import abstract_quantized

    quant = getattr(run_cfg, "quant", None)
    if quant is not None and quant.enabled:
        return abstract_quantized(run_cfg.model, quant)
    return abstract_model(run_cfg.model)
