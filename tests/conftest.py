"""Test session setup: 8 virtual CPU devices (for mesh tests), float32 matmuls on CPU."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tok():
    """The bundled 2048-piece sentencepiece tokenizer."""
    from jaxlm.tokenizer import load_tokenizer

    return load_tokenizer("bundled:tokenizer")
