"""What an adapter is, and how the family of a checkpoint is chosen.

An adapter (one module per family: llama.py, phi3.py, openelm.py) is a `Family`: its explicit
key map (`top` rules for whole-model tensors, `layer` rules under `layer_prefix`) and its two
config mappings. Rules whose jaxlm leaf the model lacks (lm_head when tied, q_norm without
QK-norm) are skipped, so the expected HF tensor set follows from the config.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxlm.convert.layout import Rule
from jaxlm.errors import JaxlmError
from jaxlm.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    top: tuple[Rule, ...]
    layer_prefix: str  # e.g. "model.layers.{i}."
    layer: tuple[Rule, ...]
    config_to_hf: Callable[[ModelConfig], dict]  # raises JaxlmError when the model does not fit the layout
    config_from_hf: Callable[[dict], dict]  # HF config.json -> the `model:` section of a jaxlm config
    # Suffixes of HF entries that hold no weights (old checkpoints saved RoPE buffers).
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    # Model code (in jaxlm/convert/hf_code) written beside the weights, for trust_remote_code.
    code_files: tuple[str, ...] = ()


def families() -> dict[str, Family]:
    from jaxlm.convert import llama, openelm, phi3

    return {f.model_type: f for f in (llama.FAMILY, llama.MISTRAL, phi3.FAMILY, openelm.FAMILY)}


def family_for_hf(hf_config: dict) -> Family:
    """The adapter for an HF config.json, from its model_type."""
    known = families()
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str) or model_type not in known:
        raise JaxlmError(f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(known)}")
    return known[model_type]


def family_for_model(cfg: ModelConfig, requested: str | None = None) -> Family:
    """The layout a jaxlm model exports to: uniform -> llama (mistral with a sliding window), or phi3
    when it uses LongRoPE or its name says Phi-3 (phi3_mini_4k, Phi-3-mini-...); otherwise openelm.
    `requested` overrides."""
    known = families()
    if requested is not None:
        if requested not in known:
            raise JaxlmError(f"unknown export format {requested!r}; supported: {', '.join(known)}")
        return known[requested]
    if cfg.rope_scaling.type == "longrope" or "phi3" in cfg.name.lower().replace("-", "").replace("_", ""):
        return known["phi3"]
    if cfg.uniform and not cfg.qk_norm:
        return known["mistral" if cfg.sliding_window is not None else "llama"]
    return known["openelm"]
