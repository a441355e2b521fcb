"""A self-contained PyTorch OpenELM (no transformers, no remote code) for folders written by
`jaxlm convert to-hf` in the OpenELM layout, or Apple's published OpenELM checkpoints.

Needs torch (the optional `torch` extra); importing this package without it raises JaxlmError.
"""

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    from jaxlm.errors import JaxlmError

    raise JaxlmError("jaxlm.torch needs PyTorch; install it with `pip install torch` (CPU build is enough)") from None

from jaxlm.torch.openelm import OpenELM, OpenELMSizes, load_openelm

__all__ = ["OpenELM", "OpenELMSizes", "load_openelm"]
