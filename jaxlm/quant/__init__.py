"""Weight-only post-training quantization: formats, RTN and GPTQ, quantized model dirs, storage accounting.

Everything but QuantConfig loads lazily: reading a config must not pay for importing flax and jax.
"""

import importlib

from jaxlm.quant.config import QuantConfig

_LAZY = {"Scheme": "formats", "abstract_quantized": "model", "quantize_model": "model",
         "storage_report": "model", "QuantizedWeight": "qweight"}


def __getattr__(name: str):
    if name in _LAZY:  # lazy: reading a config must not load Flax and JAX
        return getattr(importlib.import_module(f"jaxlm.quant.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxlm.quant' has no attribute {name!r}")

__all__ = ["QuantConfig", "QuantizedWeight", "Scheme", "abstract_quantized", "quantize_model", "storage_report"]
