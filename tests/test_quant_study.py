"""The low-bit study script end to end in --toy mode (seconds of training), and int8 vs float perplexity."""

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import xla_flags


# ~50 s of CPU (most of it compiling the train step and ten scorers); the pieces are covered by the fast
# tests in test_quant_model.py / test_lora.py, and the int8-within-1% claim by the real study's table.
@pytest.mark.slow
def test_quant_study_toy_writes_table_plot_and_int8_is_within_1pct(repo_root, tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, str(repo_root / "experiments" / "quant_study.py"), "--toy", "--out",
                           str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "quant_study.json").read_text())
    rows = {(r["bits"], r["method"]): r for r in result["rows"]}
    assert {b for b, _ in rows} == {32, 16, 8, 4, 3, 2}
    assert all((b, m) in rows for b in (8, 4, 3, 2) for m in ("rtn", "gptq"))
    fl = rows[(32, "-")]["ppl"]
    assert abs(rows[(8, "rtn")]["ppl"] / fl - 1) < 0.01  # int8 within 1% of float on the (briefly) trained model
    assert abs(rows[(16, "-")]["ppl"] / fl - 1) < 0.01
    assert rows[(4, "rtn")]["bits_per_weight"] < 4.8 and rows[(8, "rtn")]["bits_per_weight"] < 8.6
    assert "int4 RTN + LoRA" in result["lora"]
    table = (out / "quant_study.md").read_text()
    assert "| int8 per channel, sym | gptq |" in table
    assert (out / "quant_study.png").stat().st_size > 1000
