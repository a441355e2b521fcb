"""The model a run describes: the architecture of its `model:` section, quantized when its `quant:`
section is enabled, with LoRA adapters when its `lora:` section is, and which variables train.

Every place that builds a run's model calls `model_for`: the trainer (a fresh init, or the weights
of train.init_from), the train program and `jaxlm compile` (abstract shapes), and `load_model` (the
structure a checkpoint restores into). It sits above jaxlm.model, jaxlm.quant and jaxlm.lora and
below checkpoint, training and inference.

Layer buckets (model.scan_pad_budget) are for plain models only: quantization scales and LoRA
adapters belong to the stored (unpadded) layers, so a quantized or adapted model keeps that layout.
"""

from __future__ import annotations

from flax import nnx

from jaxlm.lora.adapters import apply_lora
from jaxlm.lora.config import LoraConfig
from jaxlm.model import abstract_model, build_model, to_bucketed, to_stored
from jaxlm.model.config import ModelConfig
from jaxlm.model.layouts import to_unrolled
from jaxlm.ops import target_platform
from jaxlm.ops.policy import policy
from jaxlm.quant.config import QuantConfig
from jaxlm.quant.model import is_quantized, quantize_model


def model_for(model_cfg: ModelConfig, quant: QuantConfig, lora: LoraConfig, *, abstract: bool = False,
              seed: int = 0, base=None):
    """The run's model: `base` (a loaded model), or else a fresh init from `seed` (ShapeDtypeStruct
    leaves when `abstract`), quantized when `quant.enabled` and not quantized yet, then wrapped with
    adapters when `lora.enabled`. A plain model gets model_cfg's layer buckets."""
    plain = is_plain(quant, lora)
    cfg = layout_config(model_cfg, quant, lora)
    if base is None:
        model = abstract_model(cfg) if abstract else build_model(cfg, seed=seed)
    else:
        model = to_bucketed(to_stored(base), cfg) if plain else to_stored(base)
        if model is base:  # quantization and adapters replace attributes in place: leave the caller's model be
            model = nnx.merge(*nnx.split(model))
    if quant.enabled and not is_quantized(model):
        model = quantize_model(model, quant)
    if lora.enabled:
        model = apply_lora(model, lora)
    return model


def layout_config(model_cfg: ModelConfig, quant: QuantConfig, lora: LoraConfig) -> ModelConfig:
    """The architecture in the layout the run's model is built in: model_cfg (with its layer buckets) for a
    plain model, its stored (unpadded) layout for a quantized or adapted one. The one place that decides;
    the run config itself keeps what the user wrote."""
    return model_cfg if is_plain(quant, lora) else model_cfg.stored()


def is_plain(quant: QuantConfig, lora: LoraConfig) -> bool:
    """Whether a run's model is a plain float model, the only kind that takes layer buckets."""
    return not (quant.enabled or lora.enabled)


def inference_layout(model, run_cfg):
    """A loaded model (STORED, as `load_model` returns it) in the run's scan groups: the run's layer
    buckets for a plain model; a quantized or adapted model keeps its per-layer weights."""
    return to_bucketed(model, run_cfg.model) if is_plain(run_cfg.quant, run_cfg.lora) else model


def decode_model(model, run_cfg, scanned=None, platform: str | None = None):
    """A loaded model (STORED) in the layout generation runs on the target platform, made once from STORED:
    UNROLLED where the platform's policy says so (`jaxlm.ops.policy`: decode_layers), else the run's scan
    groups (`scanned` when the caller already has them)."""
    if policy(platform or target_platform()).decode_layers == "unroll":
        return to_unrolled(model)
    return scanned if scanned is not None else inference_layout(model, run_cfg)


def trainable_filter(lora: LoraConfig):
    """The nnx filter of the variables the optimizer updates: the adapters under LoRA (the base stays
    frozen), otherwise every nnx.Param."""
    return nnx.LoRAParam if lora.enabled else nnx.Param
