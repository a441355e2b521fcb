"""The example notebook runs headless, top to bottom, on a tiny saved model (via JAXLM_CKPT)."""

import nbformat
from inference_util import random_model
from nbclient import NotebookClient

from jaxlm.assets import resolve_path
from jaxlm.checkpoint import save_model
from jaxlm.config import RunConfig
from jaxlm.model import ModelConfig

CFG = ModelConfig(name="tiny_nb", vocab_size=2048, model_dim=64, num_layers=2, head_dim=16,
                  num_query_heads=(2, 4), num_kv_heads=(1, 2), ffn_dim=(64, 128), max_context=256)


def test_generate_notebook_executes(tmp_path, repo_root, monkeypatch):
    model_dir = save_model(tmp_path / "model", RunConfig(model=CFG), random_model(CFG, seed=0),
                           extra_files=[resolve_path("bundled:tokenizer/tokenizer.model")])
    monkeypatch.setenv("JAXLM_CKPT", str(model_dir))
    monkeypatch.setenv("PYTHONPATH", str(repo_root))  # the kernel imports jaxlm from this checkout
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    path = repo_root / "examples" / "generate.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "To be, or not to be" in outputs
    assert "perplexity on 20k characters" in outputs
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
