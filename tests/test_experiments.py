"""The experiment scripts end to end at toy size (numbers not checked), plus the pieces whose
behaviour the results depend on: the unfused RMSNorm matches the fused one and really is unfused,
and the summary reads figures from result tables and marks missing ones."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TOY_CORPUS = Path(__file__).resolve().parent / "data" / "shakespeare_toy"  # a cut of ../shared/data/shakespeare


def load(name: str):
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("experiments")


def written(out: Path, name: str) -> dict:
    assert (out / f"{name}.png").stat().st_size > 1000
    md = (out / f"{name}.md").read_text()
    assert "TOY" in md and "## What it shows" in md and "Hardware:" in md
    return json.loads((out / f"{name}.json").read_text())


def test_layerwise_vs_uniform_toy(out):
    assert load("exp_layerwise_vs_uniform").main(["--toy", "--seeds", "1", "--out", str(out)]) == 0
    r = written(out, "layerwise_vs_uniform")
    assert set(r["final"]) == {"exp_layerwise", "exp_uniform"}
    assert all(len(v) == 1 and all(math.isfinite(x) for x in v) for v in r["final"].values())
    assert len(r["diff_layerwise_minus_uniform"]) == 1
    assert [c[0] for c in r["curves"]["exp_layerwise"]["0"]] == [1, 2]  # scored at every checkpoint


def test_real_layerwise_and_uniform_configs_are_within_2_percent():
    from jaxlm.config import load_run_config
    from jaxlm.model import abstract_model, param_count

    lw, un = (param_count(abstract_model(load_run_config(n).model)) for n in ("exp_layerwise", "exp_uniform"))
    assert abs(lw - un) / un < 0.02
    assert not load_run_config("exp_layerwise").model.uniform and load_run_config("exp_uniform").model.uniform


@pytest.mark.slow  # covered: test_quant_model, test_lora (the pieces); test_layerwise_vs_uniform_toy runs the harness
def test_quant_fragility_then_lora_after_quant_toy(out):
    assert load("exp_quant_fragility").main(["--toy", "--out", str(out)]) == 0
    r = written(out, "quant_fragility")
    assert {(x["budget"], x["bits"]) for x in r["rows"]} == {(b, n) for b in ("short", "long")
                                                             for n in (32, 8, 4, 3, 2)}
    assert load("exp_lora_after_quant").main(["--toy", "--out", str(out)]) == 0
    r = written(out, "lora_after_quant")
    assert [x["label"] for x in r["rows"]] == ["float32", "int4 RTN g32", "int3 RTN g32"]
    assert all(math.isfinite(x["ppl_after"]) for x in r["rows"])


@pytest.mark.slow  # covered: test_curate, test_data_sources (phases); test_layerwise_vs_uniform_toy runs the harness
def test_data_curation_toy(out):
    assert load("exp_data_curation").main(["--toy", "--out", str(out), "--data-root", str(TOY_CORPUS)]) == 0
    r = written(out, "data_curation")
    assert set(r["final"]) == {"unfiltered", "filtered", "two_phase", "one_phase"}
    assert r["synthetic"]["samples"] == 4
    assert len(list((out / ".work" / "data_curation" / "synthetic").glob("*.txt"))) == 4
    assert r["filter_stats"]["ocr"].get("dropped_too_few_chars", 0) > 0  # the OCR fragments are filtered


def test_rmsnorm_fused_toy(out):
    assert load("exp_rmsnorm_fused").main(["--toy", "--out", str(out)]) == 0
    r = written(out, "rmsnorm_fused")
    assert {x["impl"] for x in r["rows"]} == {"xla", "naive"}  # no pallas rows on a CPU
    assert all(x["decode_tok_s"] > 0 and x["prefill_tok_s"] > 0 for x in r["rows"])
    assert "UNMEASURED" in (out / "rmsnorm_fused.md").read_text()


def test_naive_rms_norm_matches_reference_and_is_not_fused():
    import jax
    import jax.numpy as jnp

    from kernels_pallas.rmsnorm import rms_norm_reference

    naive = load("exp_rmsnorm_fused").naive_rms_norm
    x = jax.random.normal(jax.random.key(0), (3, 5, 64), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (64,), jnp.float32)
    assert jnp.allclose(naive(x, w, 1e-6), rms_norm_reference(x, w, 1e-6), atol=1e-6)
    hlo = jax.jit(lambda x, w: naive(x, w, 1e-6)).lower(x, w).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    assert entry.count("conditional(") == 6  # one computation per step survives compilation


def test_throughput_summary_reads_tables_and_marks_missing(tmp_path):
    summary = load("exp_throughput_summary")
    root = tmp_path / "repo"
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "benchmarks" / "results" / "decode.md").write_text(
        "# Decode\n\nCommand: `python benchmarks/bench_decode.py --x`\nHardware: 2 CPU cores; shared\n\n"
        "| batch | jaxlm f32 tok/s | transformers f32 tok/s | **ratio** |\n| --- | --- | --- | --- |\n"
        "| 1 | 298 | 89 | 3.3x |\n| 8 | 434 | 305 | 1.4x |\n")
    out = tmp_path / "out"
    assert summary.main(["--toy", "--out", str(out), "--root", str(root)]) == 0
    r = json.loads((out / "throughput_summary.json").read_text())
    figs = {f["figure"]: f for f in r["figures"]}
    b8 = figs["decode tokens/s, jaxlm vs transformers, batch 8"]
    assert "434" in b8["value"] and "1.4x" in b8["value"] and "89" not in b8["value"]
    assert b8["command"] == "python benchmarks/bench_decode.py --x" and b8["hardware"] == "2 CPU cores"
    train = next(f for name, f in figs.items() if name.startswith("train tokens/s, jaxlm vs PyTorch"))
    assert train["value"].startswith("not found") and train["command"] == "python benchmarks/bench_train_vs_torch.py"
    assert r["gpu"][0]["status"].startswith("UNMEASURED")
    int4 = next(m for m in r["memory"] if m["scheme"] == "int4 g128 asym")
    bf16 = next(m for m in r["memory"] if m["scheme"] == "bf16")
    assert 0.3 < int4["gib"] / bf16["gib"] < 0.5  # 4-bit linear layers, bf16 embeddings
