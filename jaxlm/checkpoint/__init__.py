"""Reading and writing model weights on disk."""

from jaxlm.checkpoint.model_dir import load_model, save_model

__all__ = ["load_model", "save_model"]
