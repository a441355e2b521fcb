"""Config system: exact sizes of the shipped configs, and one-line errors for bad input."""

import dataclasses
import functools
import json
import subprocess
import sys

import pytest

from jaxlm.cli.main import main
from jaxlm.config import from_dict, load_run_config
from jaxlm.data.config import DataConfig, PhaseConfig, SourceConfig
from jaxlm.errors import ConfigError, user_message
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
    assert [c for _, c in cfg.scan_groups] == [1, 1, 1]  # (4,2,64) != (8,2,64) != (8,4,128)


BAD_INPUTS = [
    (["tiny_uniform", "--set", "model.num_layer=4"], "did you mean 'model.num_layers'"),
    (["tiny_uniform", "--set", "model.num_query_heads=6"], "not divisible by 4 kv heads"),
    (["tiny_uniform", "--set", "model.head_dim=31"], "head_dim must be even"),
    (["tiny_uniform", "--set", "model.ffn_dim=[64,64]"], "has 2 entries but model.num_layers is 6"),
    (["no_such_config"], "config file not found: no_such_config"),
    (["tiny_uniform", "--set", "model.model_dim=0"], "model.model_dim is 0, must be in [1, 2**31)"),
    (["tiny_uniform", "--set", "model.num_kv_heads=-2"], "model.num_kv_heads is -2, must be in [1, 2**31)"),
    (["tiny_uniform", "--set", "model.qk_norm=maybe"], "must be true or false"),
    (["tiny_uniform", "--set", "model.sliding_window=0"], "model.sliding_window is 0, must be >= 1 (null: full"),
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


# -- every field's range, from its one description (jaxlm.errors.bounded), from Python and from YAML ----
# (dotted field, bad value, what the one line says after "<field> is <value>, must be")
BAD_FIELDS = [
    ("seed", 10 ** 23, r"in \[0, 2\*\*32\)"),
    ("seed", -1, r"in \[0, 2\*\*32\)"),
    ("train.b1", 1.5, r"in \[0, 1\)"),
    ("train.b2", -0.1, r"in \[0, 1\)"),
    ("train.lr", 0, "> 0"),
    ("train.lr", float("nan"), "finite"),
    ("train.steps", 0, r"in \[1, 2\*\*31\)"),
    ("train.steps", 2 ** 31, r"in \[1, 2\*\*31\) \(the step counter is int32\)"),  # found by probe_inputs.py
    ("train.batch_size", 10 ** 20, r"in \[1, 2\*\*31\)"),
    ("train.sample_tokens", -1, ">= 1"),
    ("train.eval_every", -1, r">= 0 \(0: no validation\)"),
    ("train.min_lr_ratio", 1.5, r"in \[0, 1\]"),
    ("train.peak_flops", 0, "> 0"),
    ("checkpoint.keep", 0, ">= 1"),
    ("checkpoint.every", -1, r">= 0 \(0: only the last step\)"),
    ("mesh.fsdp", -2, ">= -1"),
    ("model.model_dim", 0, r"in \[1, 2\*\*31\)"),
    ("model.num_layers", 10 ** 8, r"in \[1, 2\*\*16\)"),  # a layer list that long would hang model-info
    ("model.num_kv_heads", -2, r"in \[1, 2\*\*31\)"),
    ("model.qkv_multipliers", [0.5, -1.0], "> 0"),  # "model.qkv_multipliers[1] is -1.0, ..."
    ("model.scan_pad_budget", 1.0, r"in \[0, 1\)"),
    ("model.norm_eps", 0, "> 0"),
    ("model.bos_token_id", -1, ">= 0"),
    ("model.rope_scaling.factor", 0, "> 0"),
    ("model.rope_scaling.original_max_position", 0, ">= 1"),
    ("data.shuffle_window", 0, ">= 1"),
    ("data.prefetch", -1, r">= 0 \(0: none\)"),
    ("data.workers", 0, ">= 1"),
    ("data.filters.dedup_capacity", 0, ">= 1"),
    ("data.filters.min_chars", -1, ">= 0"),
    ("quant.bits", 5, "one of 16, 8, 4, 3, 2"),
    ("quant.group_size", 48, "one of 32, 64, 128, 256"),
    ("quant.damp", 1.0, r"in \[0, 1\)"),
    ("quant.calib_batches", 0, ">= 1"),
    ("lora.rank", 0, ">= 1"),
    ("lora.alpha", 0, "> 0"),
    ("lora.seed", 2 ** 80, r"in \[0, 2\*\*32\)"),
]


@functools.cache
def _tiny():
    return load_run_config("tiny_uniform")


def _replace_at(cfg, dotted: str, value):
    """cfg with the field at `dotted` set to `value`, rebuilt from Python (each section's constructor)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _replace_at(getattr(cfg, head), rest, value)})


@pytest.mark.parametrize("field,bad,rule", BAD_FIELDS, ids=[f"{f}={b}" for f, b, _ in BAD_FIELDS])
def test_every_field_is_checked_from_python(field, bad, rule):
    with pytest.raises(ConfigError, match=rf"^{field}\S* (is \S+, )?must be (a )?{rule}") as e:
        _replace_at(_tiny(), field, bad)
    assert len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("field,bad,rule", BAD_FIELDS, ids=[f"{f}={b}" for f, b, _ in BAD_FIELDS])
def test_every_field_is_checked_from_yaml(field, bad, rule):
    with pytest.raises(ConfigError, match=rf"^{field}\S* (is \S+, )?must be (a )?{rule}"):
        load_run_config("tiny_uniform", [f"{field}={json.dumps(bad)}"])


@pytest.mark.parametrize("make,message", [
    (lambda: SourceConfig(path="x", weight=-1.0), r"data.sources\[x\].weight is -1.0, must be >= 0"),
    (lambda: PhaseConfig(weights={"a": -1.0}), r"data.phases.weights.a is -1.0, must be >= 0"),
    (lambda: from_dict(DataConfig, {"sources": [{"path": "x", "weight": -1}]}), r"data.sources\[x\].weight is -1"),
    (lambda: dataclasses.replace(_tiny().model, qkv_multipliers=(0.5, -1.0)),
     r"model.qkv_multipliers\[1\] is -1.0, must be > 0"),
    (lambda: dataclasses.replace(_tiny().train, steps="5"), "train.steps is '5', must be an integer"),
    (lambda: dataclasses.replace(_tiny().train, steps=True), "train.steps is True, must be an integer"),
    (lambda: dataclasses.replace(_tiny().train, lr=float("inf")), "train.lr is inf, must be a finite number"),
    (lambda: dataclasses.replace(_tiny().model, qk_norm=1), "model.qk_norm is 1, must be true or false"),
    (lambda: dataclasses.replace(_tiny().model, remat="some"), "model.remat is 'some', must be one of 'none'"),
    (lambda: dataclasses.replace(_tiny(), train=3), "train is 3, must be TrainConfig"),
])
def test_sections_in_lists_and_wrong_types_from_python(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_list_from_python_is_stored_as_a_tuple():
    model = dataclasses.replace(_tiny().model, num_layers=2, num_query_heads=[4, 8], num_kv_heads=[2, 4],
                                ffn_dim=[64, 128])
    assert model.num_query_heads == (4, 8) and hash(model)
    assert [s.num_query_heads for s in model.layer_specs] == [4, 8]


@pytest.mark.parametrize("inherit", ["3", "[a.yaml, b.yaml]", "{name: x}"])
def test_inherit_must_be_a_string(inherit, tmp_path):
    (tmp_path / "bad.yaml").write_text(f"inherit: {inherit}\n")
    with pytest.raises(ConfigError, match="`inherit:` in .*bad.yaml must be a config name or a path"):
        load_run_config(tmp_path / "bad.yaml")


def test_an_unquoted_override_that_yaml_reads_as_a_mapping_gets_a_quoting_hint():
    with pytest.raises(ConfigError) as e:
        load_run_config("tiny_uniform", ["train.sample_prompt=ROMEO: hi"])
    assert """quote it, e.g. --set 'train.sample_prompt="ROMEO: hi"'""" in str(e.value)
    assert load_run_config("tiny_uniform", ['train.sample_prompt="ROMEO: hi"']).train.sample_prompt == "ROMEO: hi"


def test_the_sample_must_fit_the_context_at_load_time():
    context = _tiny().model.max_context
    with pytest.raises(ConfigError, match=f"train.sample_tokens {context} and the sample prompt do not fit"):
        load_run_config("tiny_uniform", [f"train.sample_tokens={context}"])
    assert load_run_config("tiny_uniform", [f"train.sample_tokens={context}", "train.sample_prompt="])


# -- memory: a lower bound from the shapes, refused before compiling; out of memory is one line --------
def _tiny_run(*overrides):
    return load_run_config("default", ["model.num_layers=2", "model.model_dim=128", "train.batch_size=2",
                                       "train.seq_len=32", "mesh.data=1", *overrides])


def test_step_bytes_counts_activations_and_state():
    from jaxlm.training.memory import step_bytes

    cfg = _tiny_run("train.batch_size=8", "train.micro_batches=2")
    need = step_bytes(cfg)
    # 2 layers x (4 sequences x 32 tokens x 128 wide) f32 block inputs + one (4, 32, 2048) f32 logits chunk
    assert need.activations == 2 * 4 * 32 * 128 * 4 + 4 * 32 * 2048 * 4
    assert need.params == 557_824 and need.state == 4 * 557_824 * 4  # weights, gradients, 2 AdamW moments (f32)
    lora = step_bytes(_tiny_run("lora.enabled=true", "quant.bits=4"))
    assert lora.state == 557_824 * 4 // 8  # a frozen 4-bit base: no gradients or moments


def test_step_bytes_is_a_lower_bound_of_the_compiled_step():
    import jax

    from jaxlm.parallel import make_mesh
    from jaxlm.training.memory import step_bytes
    from jaxlm.training.program import build_train_program

    cfg = _tiny_run()
    program = build_train_program(cfg, make_mesh(1, 1, 1, jax.devices()[:1]))
    mem = program.step_fn.lower(*program.abstract_args(2, 32)).compile().memory_analysis()
    assert step_bytes(cfg).total <= mem.argument_size_in_bytes + mem.temp_size_in_bytes


@pytest.mark.parametrize("override,lower", [
    ("train.batch_size=300000", r"lower train.batch_size \(or raise train.micro_batches\) or train.seq_len$"),
    ("model.model_dim=1000000", "lower model.model_dim or model.num_layers$"),
])
def test_a_step_that_cannot_fit_the_host_is_refused(override, lower, monkeypatch):
    import jax

    from jaxlm import errors
    from jaxlm.parallel import make_mesh
    from jaxlm.training import memory

    monkeypatch.setattr(errors, "host_ram_bytes", lambda: 16 * 2 ** 30)
    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    memory.check_fits(_tiny_run(), mesh)  # 9 MiB: fits
    with pytest.raises(ConfigError, match=r"one train step needs at least [\d.]+ GiB, more than this host's RAM "
                                          r"\(16.0 GiB\): .*" + lower) as e:
        memory.check_fits(_tiny_run(override), mesh)
    assert len(str(e.value).splitlines()) == 1


def test_out_of_memory_is_a_user_error():
    import jax.numpy as jnp

    with pytest.raises(Exception) as e:
        jnp.zeros((10 ** 7, 10 ** 6))  # 40 TB: refused by the allocator at once
    message = user_message(e.value)
    assert message and message.startswith("out of memory (37252.90 GiB asked for; this host has")
    assert "train.batch_size" in message and len(message.splitlines()) == 1
    assert user_message(MemoryError("Unable to allocate 74.5 GiB for an array")).startswith("out of memory (Unable")
