"""Post-training through the real trainer on a tiny model and the bundled chat example: SFT (assistant-token
loss, token accuracy, the chat template carried into the run dir), a stopped-and-resumed run equal bit for
bit to an uninterrupted one, DPO whose first loss is ln 2 (the policy starts equal to its reference: LoRA
adapters off, or a frozen copy under full fine-tuning), SimPO without a reference, DPO without a reference
refused before anything is written, and a sharded mesh equal to one device."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxlm.config import from_dict
from jaxlm.config.run import RunConfig
from jaxlm.errors import ConfigError
from jaxlm.posttrain import example as make_chat_example
from jaxlm.training.trainer import train

from train_helpers import TINY_MODEL

MODEL = {**TINY_MODEL, "vocab_size": 2048, "max_context": 128}
TEMPLATE = "bundled:chat/turns.jinja"


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> dict[str, str]:
    """The first records of each file of the bundled example (jaxlm.posttrain.example)."""
    full, small = tmp_path_factory.mktemp("chat_full"), tmp_path_factory.mktemp("chat")
    make_chat_example.build(full)
    out = {}
    for name, n in (("sft_train", 48), ("sft_valid", 8), ("dpo_train", 24), ("dpo_valid", 8)):
        (small / f"{name}.jsonl").write_text("".join((full / f"{name}.jsonl").read_text().splitlines(True)[:n]))
        out[name] = str(small / f"{name}.jsonl")
    return out


def run_config(out_dir, objective: str, data: str, steps: int = 3, mesh=(1, 1, 1), lora: bool = False,
               validation: str | None = None, **train_fields) -> RunConfig:
    train_cfg = {"steps": steps, "batch_size": 4, "seq_len": 64 if objective == "sft" else 128, "lr": 1e-2,
                 "warmup_steps": 1, "log_every": 1, "out_dir": str(out_dir), "sample_prompt": "", "z_loss": 0.0,
                 "eval_every": steps if validation else 0, **train_fields}
    return from_dict(RunConfig, {
        "model": MODEL, "seed": 0, "train": train_cfg, "mesh": dict(zip(("data", "fsdp", "tensor"), mesh)),
        "checkpoint": {"every": 2, "keep": 2, "keep_best": 1, "async_save": False},
        "lora": {"enabled": lora, "rank": 4}, "data": {"tokenizer": "bundled:tokenizer"},
        "posttrain": {"objective": objective, "train_data": data, "validation_data": validation,
                      "chat_template": TEMPLATE, **({"beta": 2.0} if objective == "simpo" else {})}})


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, chat_data):
    out = tmp_path_factory.mktemp("sft") / "run"
    result = train(run_config(out, "sft", chat_data["sft_train"], steps=4, validation=chat_data["sft_valid"]),
                   devices=jax.devices()[:1], quiet=False)
    return out, result


def test_sft_trains_on_assistant_tokens_and_carries_the_template(sft_run):
    out, result = sft_run
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(0 <= r["mean_token_accuracy"] <= 1 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["val_loss"] > 0 and records[-1]["val_tokens"] > 0
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "{% generation %}" in config["chat_template"]  # exports and `generate --chat` use it
    import jaxlm

    lm = jaxlm.load(out)  # lm.chat finds the run's template itself
    assert lm.tokenizer.decode(lm.chat_prompt([{"role": "user", "content": "Hi"}])).endswith("ASSISTANT:\n")
    assert isinstance(lm.chat([{"role": "user", "content": "Speak."}], max_new_tokens=2), str)


def test_sft_stopped_and_resumed_equals_uninterrupted(sft_run, chat_data, tmp_path):
    _, whole = sft_run
    cfg = run_config(tmp_path / "run", "sft", chat_data["sft_train"], steps=4, validation=chat_data["sft_valid"])
    first = train(from_dict(RunConfig, {**_as_dict(cfg), "train": {**_as_dict(cfg)["train"], "stop_after": 2}}),
                  devices=jax.devices()[:1], quiet=True)
    assert first.stopped == "preempted" and first.step == 2
    second = train(cfg, devices=jax.devices()[:1], quiet=True)
    assert {**first.losses, **second.losses} == whole.losses  # bitwise: the data state and the step resume exactly
    for a, b in zip(jax.tree.leaves(second.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("lora", [True, False], ids=["lora-adapters-off", "full-frozen-copy"])
def test_dpo_starts_at_ln2_and_learns(sft_run, chat_data, tmp_path, lora):
    four = tmp_path / "four.jsonl"  # one batch of pairs, seen at every step: the loss must go down
    four.write_text("".join(Path(chat_data["dpo_train"]).read_text().splitlines(True)[:4]))
    cfg = run_config(tmp_path / "dpo", "dpo", str(four), steps=4, lora=lora, validation=chat_data["dpo_valid"],
                     init_from=str(sft_run[0]))
    result = train(cfg, devices=jax.devices()[:1], quiet=False)
    records = metrics(tmp_path / "dpo")
    assert abs(result.losses[1] - math.log(2)) < 1e-6  # policy == reference at the start
    assert abs(records[0]["rewards/margins"]) < 1e-6 and records[0]["pairs"] == 4
    assert result.losses[4] < math.log(2) - 0.01 and records[-1]["rewards/margins"] > 0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert math.isfinite(records[-1][key])
    assert 0 <= records[-1]["val_rewards/accuracies"] <= 1 and records[-1]["val_pairs"] == 8


def test_simpo_needs_no_reference(chat_data, tmp_path):
    result = train(run_config(tmp_path / "simpo", "simpo", chat_data["dpo_train"], steps=2),
                   devices=jax.devices()[:1], quiet=False)
    assert all(math.isfinite(v) for v in result.losses.values())
    assert metrics(tmp_path / "simpo")[0]["rewards/chosen"] < 0  # beta x mean log-prob


def test_dpo_without_reference_is_refused_before_writing(chat_data, tmp_path):
    with pytest.raises(ConfigError, match="train.init_from"):
        train(run_config(tmp_path / "dpo", "dpo", chat_data["dpo_train"]), devices=jax.devices()[:1])
    assert not (tmp_path / "dpo").exists()


@pytest.mark.parametrize("mesh", [(2, 2, 2)])
def test_sharded_sft_equals_one_device(sft_run, chat_data, tmp_path, mesh):
    _, whole = sft_run
    cfg = run_config(tmp_path / "run", "sft", chat_data["sft_train"], steps=4, mesh=mesh, stop_after=3)
    sharded = train(cfg, devices=jax.devices()[:8], quiet=True)
    assert sorted(sharded.losses) == [1, 2, 3]
    for step, loss in sharded.losses.items():
        assert abs(loss - whole.losses[step]) < 1e-5


def _as_dict(cfg) -> dict:
    from jaxlm.config import to_dict

    return to_dict(cfg)


@pytest.fixture(scope="module")
def qlora_run(sft_run, chat_data, tmp_path_factory):
    import dataclasses

    from jaxlm.quant import QuantConfig

    out = tmp_path_factory.mktemp("qlora") / "run"
    cfg = run_config(out, "dpo", chat_data["dpo_train"], steps=2, lora=True, init_from=str(sft_run[0]))
    cfg = dataclasses.replace(cfg, quant=QuantConfig(bits=4, group_size=32))
    return cfg, train(cfg, devices=jax.devices()[:1], quiet=True)


def test_qlora_dpo_holds_one_base(qlora_run, tmp_path):
    """DPO with LoRA on an int4 base: the reference is that base with the adapters off (no copy in the state,
    the first loss ln 2); the PEFT adapter folder carries the run's chat template."""
    from jaxlm.cli.main import main
    from jaxlm.parallel import make_mesh
    from jaxlm.training.program import build_train_program

    cfg, result = qlora_run
    program = build_train_program(cfg, make_mesh(1, 1, 1, jax.devices()[:1]))
    assert program.reference == "adapters_off" and set(program.state_shard) == {"params", "opt_state"}
    assert abs(result.losses[1] - math.log(2)) < 1e-6 and result.losses[2] != result.losses[1]
    assert main(["lora", "export", "--ckpt", str(result.run_dir), "--out", str(tmp_path / "adapter")]) == 0
    assert ("{% generation %}"
            in json.loads((tmp_path / "adapter" / "tokenizer_config.json").read_text())["chat_template"])


@pytest.mark.slow
def test_qlora_dpo_merged_export_loads_in_transformers(qlora_run, tmp_path):
    """The merged QLoRA-DPO model, exported to Hugging Face, gives jaxlm's logits in transformers and carries the
    chat template."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import jaxlm
    from jaxlm.cli.main import main

    run_dir = qlora_run[1].run_dir
    assert main(["lora", "merge", "--ckpt", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
    assert main(["convert", "to-hf", "--ckpt", str(tmp_path / "merged"), "--out", str(tmp_path / "hf")]) == 0
    assert "{% generation %}" in transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template
    lm = jaxlm.load(tmp_path / "merged")
    ids = np.asarray([lm.chat_prompt([{"role": "user", "content": "Speak, ROMEO."}])])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(lm.model(jax.numpy.asarray(ids))), want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_qlora_dpo_peft_adapter_loads_in_peft(qlora_run, tmp_path):
    """The PEFT adapter of the QLoRA-DPO run on the dequantized int4 base (that base exported to Hugging Face)
    gives the jaxlm QLoRA model's logits in PEFT within 1e-4."""
    import dataclasses

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from jaxlm.checkpoint.lora_merged import load_lora_model
    from jaxlm.checkpoint.model_dir import save_model, tokenizer_files
    from jaxlm.cli.main import main
    from jaxlm.lora.adapters import LoraWeight, lora_weights, merge_lora
    from jaxlm.lora.config import LoraConfig
    from jaxlm.quant.config import QuantConfig
    from jaxlm.quant.model import dequantize_model

    run_dir = qlora_run[1].run_dir
    run_cfg, model = load_lora_model(run_dir)
    ids = jax.numpy.asarray([list(range(3, 40))])
    ours = np.asarray(model(ids))  # the trained QLoRA model: int4 base + adapters
    for _, _, parent, attr in lora_weights(model):  # the base alone: adapters zeroed, folded, dequantized
        weight = getattr(parent, attr)
        if isinstance(weight, LoraWeight):
            weight.lora_b[...] = jax.numpy.zeros_like(weight.lora_b[...])
    merge_lora(model)
    dequantize_model(model)
    save_model(tmp_path / "base", dataclasses.replace(run_cfg, lora=LoraConfig(), quant=QuantConfig()), model,
               extra_files=tokenizer_files(run_dir))
    assert main(["convert", "to-hf", "--ckpt", str(tmp_path / "base"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["lora", "export", "--ckpt", str(run_dir), "--out", str(tmp_path / "adapter")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = torch.from_numpy(np.asarray(ids)).long()
    with torch.no_grad():
        base = hf(tokens).logits.numpy()
        want = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()(tokens).logits.numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want - base).max() > 1e-3  # the adapters matter: equal logits are not the base's


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)])
def test_sharded_runs_equal_one_device(sft_run, chat_data, tmp_path, objective, mesh):
    """The slow form of test_sharded_sft_equals_one_device: both objectives, both meshes, 8 devices."""
    kwargs = dict(steps=3, lora=objective == "dpo", init_from=str(sft_run[0]) if objective == "dpo" else None)
    data = chat_data[f"{objective}_train"]
    cfg = {"batch_size": 8}
    one = train(run_config(tmp_path / "one", objective, data, **kwargs, **cfg), devices=jax.devices()[:1], quiet=True)
    many = train(run_config(tmp_path / "many", objective, data, mesh=mesh, **kwargs, **cfg), devices=jax.devices()[:8],
                 quiet=True)
    assert one.losses.keys() == many.losses.keys()
    for step, loss in one.losses.items():
        assert abs(loss - many.losses[step]) < 1e-5, (step, loss, many.losses[step])


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_sigterm_then_resume_equals_uninterrupted(sft_run, chat_data, tmp_path, objective):
    """`jaxlm train` stopped by SIGTERM after its first checkpoint and rerun: every step's loss bitwise equal to an
    uninterrupted run's (the slow form of test_sft_stopped_and_resumed_equals_uninterrupted)."""
    import signal
    import subprocess
    import time

    import yaml

    from jaxlm.config import to_dict

    from cli_helpers import cli_env

    def config(out):
        cfg = to_dict(run_config(out, objective, chat_data[f"{objective}_train"], steps=12, lora=objective == "dpo",
                                 init_from=str(sft_run[0]) if objective == "dpo" else None))
        cfg["checkpoint"]["every"] = 3
        (tmp_path / f"{out.name}.yaml").write_text(yaml.safe_dump(cfg))
        return [sys.executable, "-m", "jaxlm.cli.main", "train", str(tmp_path / f"{out.name}.yaml")]

    env = cli_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen(config(tmp_path / "stopped"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "stopped" / "checkpoints" / "3").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped at step" in stdout + stderr, stderr[-2000:]
    assert subprocess.run(config(tmp_path / "stopped"), env=env, capture_output=True).returncode == 0
    assert subprocess.run(config(tmp_path / "whole"), env=env, capture_output=True).returncode == 0
    losses = {name: {r["step"]: r["loss"] for r in metrics(tmp_path / name)} for name in ("stopped", "whole")}
    assert losses["stopped"] == losses["whole"] and len(losses["whole"]) == 12


@pytest.mark.slow
def test_openelm_layer_buckets_sft_then_dpo_frozen_copy(chat_data, tmp_path):
    """A layerwise model in padded layer buckets (model.scan_pad_budget): SFT, then full fine-tuning DPO whose
    frozen reference is held in the same bucketed layout (its first loss ln 2). Fast analogs: the unbucketed
    runs above."""
    from jaxlm.config import load_run_config, to_dict

    model = {**to_dict(load_run_config("tiny_layerwise").model), "num_layers": 4, "scan_pad_budget": 0.5,
             "max_context": 128, "attention_impl": "xla", "norm_impl": "xla"}

    def bucketed(cfg):
        cfg = from_dict(RunConfig, {**to_dict(cfg), "model": model})
        assert cfg.model.bucketed
        return cfg

    sft = bucketed(run_config(tmp_path / "sft", "sft", chat_data["sft_train"], steps=2))
    train(sft, devices=jax.devices()[:1], quiet=True)
    dpo = bucketed(run_config(tmp_path / "dpo", "dpo", chat_data["dpo_train"], steps=2,
                              init_from=str(tmp_path / "sft")))
    result = train(dpo, devices=jax.devices()[:1], quiet=True)
    assert abs(result.losses[1] - math.log(2)) < 1e-6 and math.isfinite(result.losses[2])
