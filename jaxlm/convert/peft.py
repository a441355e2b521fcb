"""Export LoRA adapters in the Hugging Face PEFT format: adapter_config.json + adapter_model.safetensors.

Key names follow the HF layout the model converts to (`jaxlm convert to-hf`; Llama layout for
uniform models), e.g. `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (r, in) and
`...lora_B.weight` (out, r). The per-projection tensors are cut with the conversion's own key map
and transforms, so adapters and base weights split the same way: for the fused qkv the shared A
goes to q_proj, k_proj and v_proj, and B is split into q / k / v rows like the base weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from jaxlm.convert.family import family_for_model
from jaxlm.convert.to_hf import write_tokenizer
from jaxlm.errors import JaxlmError
from jaxlm.lora.adapters import LoraWeight, lora_weights
from jaxlm.lora.config import TARGETS, LoraConfig
from jaxlm.outputs import check_output, output_path


def peft_tensors(model, family=None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The adapter tensors under PEFT key names, and the HF module names they target."""
    family = family or family_for_model(model.cfg)
    rules = {rule.leaf: rule for rule in family.layer}
    tensors, modules = {}, set()
    first_layer = np.cumsum([0] + [count for _, count in model.cfg.scan_groups])
    for gi, target, parent, attr in lora_weights(model):
        w = getattr(parent, attr)
        if not isinstance(w, LoraWeight):
            continue
        rule = rules.get(TARGETS[target])
        if rule is None:
            raise JaxlmError(f"the {family.model_type} layout has no tensor for {target}; cannot export its adapter")
        a_all, b_all = np.asarray(w.lora_a[...], np.float32), np.asarray(w.lora_b[...], np.float32)
        for li in range(a_all.shape[0]):
            a, b = a_all[li], b_all[li]  # (*in, r), (r, *out)
            lora_a = np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)  # (r, in): inputs flattened like the base
            lora_bs = rule.transform.to_hf(b)  # (out, r) per HF tensor, split like the base weight
            prefix = family.layer_prefix.format(i=int(first_layer[gi]) + li)
            for hf_name, lora_b in zip(rule.hf, lora_bs):
                module = prefix + hf_name.removesuffix(".weight")
                tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a
                tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
                modules.add(hf_name.removesuffix(".weight").split(".")[-1])
    if not tensors:
        raise JaxlmError("the model has no LoRA adapters to export; train with a `lora:` section (enabled: true)")
    return tensors, sorted(modules)


def export_peft(model, lora_cfg: LoraConfig, out: str | Path, base_model: str = "", overwrite: bool = False,
                inputs: list[str | Path] = (), tokenizer_from: str | Path | None = None) -> Path:
    """Write out/adapter_config.json and out/adapter_model.safetensors (atomically: temp dir + rename);
    `out` must not overlap `inputs` (the run the adapters come from). tokenizer_from: the run's folder, whose
    tokenizer is written beside the adapter for AutoTokenizer (its tokenizer_config.json carries the chat
    template a post-training run used), as to-hf writes it."""
    out = check_output(out, overwrite=overwrite, inputs=inputs)
    tensors, modules = peft_tensors(model)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model or None,
        "r": lora_cfg.rank, "lora_alpha": lora_cfg.alpha, "lora_dropout": 0.0, "target_modules": modules,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False,
        "init_lora_weights": True, "modules_to_save": None,
    }
    with output_path(out, checked=True) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if tokenizer_from is not None:
            write_tokenizer(Path(tokenizer_from), tmp, model.cfg.max_context)
    return out
