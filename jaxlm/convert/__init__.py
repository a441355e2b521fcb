"""Checkpoint conversion between jaxlm and Hugging Face layouts (Llama, Phi-3, OpenELM).

One adapter module per family (llama.py, phi3.py, openelm.py) holds its explicit key map and
config mapping; layout.py holds the tensor transforms; hf_io.py and jaxlm.checkpoint.params_io
stream tensors one at a time on each side.
"""

from jaxlm.convert.family import families
from jaxlm.convert.from_hf import from_hf
from jaxlm.convert.to_hf import to_hf

__all__ = ["families", "from_hf", "to_hf"]
