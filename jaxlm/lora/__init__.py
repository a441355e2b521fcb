"""LoRA: low-rank adapters on a frozen (optionally quantized) base, and merging them into it.

On disk: `jaxlm.checkpoint.lora_merged` writes a merged model dir, `jaxlm.convert.peft` exports
the adapters in the Hugging Face PEFT format."""

from jaxlm.lora.config import LoraConfig

__all__ = ["LoraConfig", "LoraWeight", "apply_lora", "merge_lora", "has_lora"]


def __getattr__(name):
    if name in ("LoraWeight", "apply_lora", "merge_lora", "has_lora"):
        # lazy: the config section is imported by jaxlm.config without pulling in Flax
        from jaxlm.lora import adapters

        return getattr(adapters, name)
    raise AttributeError(name)
