"""Weight-only post-training quantization: formats, RTN and GPTQ, quantized model dirs, storage accounting."""

from jaxlm.quant.config import QuantConfig
from jaxlm.quant.formats import Scheme
from jaxlm.quant.model import abstract_quantized, quantize_model, storage_report
from jaxlm.quant.qweight import QuantizedWeight

__all__ = ["QuantConfig", "QuantizedWeight", "Scheme", "abstract_quantized", "quantize_model", "storage_report",
           "abstract_base_model"]


def abstract_base_model(run_cfg):
    """The model structure (ShapeDtypeStruct leaves) of `run_cfg` before any LoRA: quantized when its
    `quant:` section is enabled. What a trainer or loader should restore into."""
    from jaxlm.model import abstract_model

    quant = getattr(run_cfg, "quant", None)
    if quant is not None and quant.enabled:
        return abstract_quantized(run_cfg.model, quant)
    return abstract_model(run_cfg.model)
