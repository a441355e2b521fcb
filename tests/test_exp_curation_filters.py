"""experiments/exp_curation_filters.py end to end at toy size (numbers not checked). Slow (about 80 s on 2
cores: three curations, three tiny training runs); the stages it drives are covered in the default run by
tests/test_curate.py."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("rensa")
pytest.importorskip("fasttext")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TOY_CORPUS = Path(__file__).resolve().parent / "data" / "shakespeare_toy"  # a cut of ../shared/data/shakespeare


@pytest.mark.slow
def test_curation_filters_toy(tmp_path):
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("exp_curation_filters", EXPERIMENTS / "exp_curation_filters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--toy", "--out", str(tmp_path), "--data-root", str(TOY_CORPUS)]) == 0
    assert (tmp_path / "curation_filters.png").stat().st_size > 1000
    assert "## What it shows" in (tmp_path / "curation_filters.md").read_text()
    r = json.loads((tmp_path / "curation_filters.json").read_text())
    assert set(r["final"]) == {"raw", "heuristics", "curated"}
    assert all(math.isfinite(x) for v in r["final"].values() for x in v.values())
    kept = {a: r["curation"][a]["kept"] for a in r["curation"]}
    assert kept["raw"] >= kept["heuristics"] >= kept["curated"] > 0
