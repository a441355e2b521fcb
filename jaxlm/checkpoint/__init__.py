"""Everything on disk that holds weights: model dirs (model_dir, params_io), a run's Orbax
checkpoints (run_checkpoints), quantized model dirs (quantized), and finding them (locate)."""

from jaxlm.checkpoint.model_dir import load_model, save_model

__all__ = ["load_model", "save_model"]
