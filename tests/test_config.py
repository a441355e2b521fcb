"""Config system: exact sizes of the shipped configs, and one-line errors for bad input."""

import subprocess
import sys

import pytest

from jaxlm.cli.main import main
from jaxlm.config import load_run_config
from jaxlm.model import abstract_model, flops, param_count

EXPECTED_PARAMS_M = {"openelm_270m": 271.53, "openelm_450m": 457.18, "openelm_1_1b": 1079.89, "openelm_3b": 3036.65}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_M))
def test_openelm_param_counts_from_eval_shape(name):
    cfg = load_run_config(name).model
    n = param_count(abstract_model(cfg))
    assert round(n / 1e6, 2) == EXPECTED_PARAMS_M[name]
    assert n == flops.total_params(cfg)  # the analytic count agrees with the real shapes


@pytest.mark.parametrize("name,expected", [
    ("llama3_8b", 8_030_261_248), ("llama3_1_8b", 8_030_261_248),
    ("phi3_mini_4k", 3_821_079_552), ("phi3_mini_128k", 3_821_079_552),
])
def test_llama_phi_param_counts_exact(name, expected):
    cfg = load_run_config(name).model
    assert param_count(abstract_model(cfg)) == expected


def _expand(runs):
    return [n for n, times in runs for _ in range(times)]


def test_openelm_270m_layer_sizes_match_reference():
    specs = load_run_config("openelm_270m").model.layer_specs
    assert [s.num_query_heads for s in specs] == _expand([(12, 5), (16, 7), (20, 4)])
    assert [s.num_kv_heads for s in specs] == [q // 4 for q in _expand([(12, 5), (16, 7), (20, 4)])]
    assert [s.ffn_dim for s in specs] == [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584,
                                          3840, 4352, 4608, 4864, 5120]


def test_openelm_1_1b_layer_sizes_match_reference():
    specs = load_run_config("openelm_1_1b").model.layer_specs
    q = _expand([(16, 3), (20, 7), (24, 8), (28, 6), (32, 4)])
    assert [s.num_query_heads for s in specs] == q
    assert [s.num_kv_heads for s in specs] == [x // 4 for x in q]


def test_overrides_and_inheritance():
    cfg = load_run_config("llama3_1_8b", ["model.num_layers=2", "model.rope_scaling.factor=4"]).model
    assert cfg.num_layers == 2 and cfg.rope_scaling.type == "llama3" and cfg.rope_scaling.factor == 4.0
    assert cfg.vocab_size == 128256  # inherited from llama3_8b.yaml


def test_explicit_per_layer_lists():
    cfg = load_run_config("tiny_uniform", ["model.num_layers=3", "model.num_query_heads=[4,8,8]",
                                           "model.num_kv_heads=[2,2,4]", "model.ffn_dim=[64,64,128]"]).model
    assert [(s.num_query_heads, s.num_kv_heads, s.ffn_dim) for s in cfg.layer_specs] == [
        (4, 2, 64), (8, 2, 64), (8, 4, 128)]
    assert [c for _, c in cfg.layer_groups] == [1, 1, 1]  # (4,2,64) != (8,2,64) != (8,4,128)


BAD_INPUTS = [
    (["tiny_uniform", "--set", "model.num_layer=4"], "did you mean 'model.num_layers'"),
    (["tiny_uniform", "--set", "model.num_query_heads=6"], "not divisible by 4 kv heads"),
    (["tiny_uniform", "--set", "model.head_dim=31"], "head_dim must be even"),
    (["tiny_uniform", "--set", "model.ffn_dim=[64,64]"], "has 2 entries but model.num_layers is 6"),
    (["no_such_config"], "config file not found: no_such_config"),
    (["tiny_uniform", "--set", "model.model_dim=0"], "model.model_dim must be a positive integer"),
    (["tiny_uniform", "--set", "model.num_kv_heads=-2"], "must hold positive integers"),
    (["tiny_uniform", "--set", "model.qk_norm=maybe"], "must be true or false"),
    (["tiny_uniform", "--set", "model.sliding_window=0"], "model.sliding_window must be a positive integer or null"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    assert main(["model-info", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  vocab_size: 10\n   model_dim: [\n")
    assert main(["model-info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and "line" in err and len(err.strip().splitlines()) == 1


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxlm.cli.main", "model-info", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_model_info_prints_table_and_totals(capsys):
    assert main(["model-info", "openelm_270m"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 271,527,168" in out
    assert len([line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]) == 16  # 16 layer rows
    assert "FLOPs/token" in out
