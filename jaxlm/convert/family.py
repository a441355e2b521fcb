"""The adapter registry: which `Family` (jaxlm.convert.layout) converts a checkpoint.

An adapter is one module per family (llama.py, phi3.py, openelm.py) defining a `Family`; this
module imports them and picks one, from an HF config's model_type or from a jaxlm model config.
"""

from __future__ import annotations

from jaxlm.convert import llama, openelm, phi3
from jaxlm.convert.layout import Family
from jaxlm.errors import JaxlmError
from jaxlm.model.config import ModelConfig

__all__ = ["Family", "families", "family_for_hf", "family_for_model"]


def families() -> dict[str, Family]:
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
