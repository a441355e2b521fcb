"""Test session setup: 8 virtual CPU devices (for mesh tests), float32 matmuls on CPU."""

import os
import tempfile

from cli_helpers import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the test session, its xdist workers and the `jaxlm`
# subprocesses they start (inherited through the environment): most CLI tests train or decode the
# same tiny programs, and compiling them again is most of their time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"jaxlm-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


# The longest tests (minutes on 2 cores), started first: pytest-xdist hands tests out in collection
# order, so a long test collected last would run alone while the other worker idles.
LONG_FIRST = ("test_readme.py::test_every_readme_command_runs", "test_sharding.py::test_same_losses",
              "test_train_multiprocess.py::", "test_checkpoint_resume.py::test_kill9",
              "test_tpu_compile.py::", "test_kernels_sharded.py::test_train_step",
              "test_experiments.py::test_quant_fragility", "test_train.py::test_cli_train",
              "test_experiments.py::test_layerwise_vs_uniform", "test_convert_train.py::",
              "test_lora.py::test_lora_training_through", "test_notebook.py::")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, key in enumerate(LONG_FIRST) if key in item.nodeid), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
