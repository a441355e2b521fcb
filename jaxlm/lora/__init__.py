"""LoRA: low-rank adapters on a frozen (optionally quantized) base, merging, and PEFT export."""

from jaxlm.lora.config import LoraConfig

__all__ = ["LoraConfig", "LoraWeight", "apply_lora", "merge_lora", "has_lora", "export_peft"]


def __getattr__(name):  # lazy: the config section is imported by jaxlm.config without pulling in Flax
    if name in ("LoraWeight", "apply_lora", "merge_lora", "has_lora"):
        from jaxlm.lora import adapters

        return getattr(adapters, name)
    if name == "export_peft":
        from jaxlm.lora.peft import export_peft

        return export_peft
    raise AttributeError(name)
