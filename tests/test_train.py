"""`jaxlm train` end to end on the bundled corpus, plus the optimizer, schedule, loss and accumulation."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.checkpoint import load_model, save_model
from jaxlm.cli.main import main
from jaxlm.config import load_run_config
from jaxlm.training.loss import loss_sums
from jaxlm.training.optimizer import decay_mask, lr_schedule
from jaxlm.training.trainer import train

from train_helpers import tiny_run_config, token_batches

SMALL = ["--set", "model.model_dim=64", "--set", "model.num_layers=2", "--set", "model.head_dim=16",
         "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "train.seq_len=32",
         "--set", "train.log_every=2", "--set", "checkpoint.every=2", "--set", "train.sample_tokens=8"]


def test_cli_train_on_bundled_corpus_writes_run_dir_samples_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--set", f"train.out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "sample (temperature 0.8" in printed and "ROMEO:" in printed
    assert re.search(r"kernels in the train step: .*attention xla x\d", printed)  # logged at the first compile
    assert (out / "config.yaml").is_file() and (out / "tokenizer.model").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "mfu", "val_loss", "val_ppl"):
        assert key in records[0]  # the default config validates on the held-back plays at every checkpoint
    assert records[0]["mfu"] is None  # CPU: no peak FLOP/s to compare with
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # The run dir's data-iterator state is in the checkpoint (for exact resume).
    meta = json.loads((out / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert meta["step"] == 4 and isinstance(meta["data_state"][0], dict)
    assert main(["plot", str(out)]) == 0
    assert (out / "plots" / "loss.png").stat().st_size > 1000 and (out / "plots" / "throughput.png").is_file()
    # Rerunning a finished run says so, trains nothing and leaves the checkpoints as they were.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    assert main(["train", *SMALL, "--set", f"train.out_dir={out}"]) == 0
    assert "already finished at step 4 of train.steps=4" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_empty_corpus_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    code = main(["train", *SMALL, "--set", f"train.out_dir={out}",
                 "--set", f"data.sources=[{{path: {empty}, name: e}}]"])
    err = capsys.readouterr().err
    assert code == 2 and "error" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists() or not out.exists()


def test_default_config_is_the_tiny_layerwise_model_on_the_bundled_corpus():
    cfg = load_run_config(None, [], default="default")
    assert cfg.model.name == "tiny_layerwise" and cfg.data.sources[0].path.startswith("bundled:")
    assert cfg.train.out_dir == "runs/default"


def test_schedule_warmup_cosine_floor_and_decay_mask():
    sched = lr_schedule(1e-2, steps=100, warmup_steps=10, warmup_init_lr=0.0, min_lr_ratio=0.1)
    assert float(sched(0)) == 0.0 and abs(float(sched(5)) - 5e-3) < 1e-9 and abs(float(sched(10)) - 1e-2) < 1e-9
    assert abs(float(sched(100)) - 1e-3) < 1e-9 and float(sched(55)) < 1e-2
    axes = {"embed": ("vocab", "embed"), "norm": ("layers", "norm"), "w": ("layers", "embed", None, "mlp"),
            "q_norm": ("layers", "head_dim")}
    assert decay_mask(axes) == {"embed": True, "norm": False, "w": True, "q_norm": False}


def test_loss_sums_match_a_direct_cross_entropy_with_z_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
    out = loss_sums(logits, targets, mask, z_loss=1e-2)
    logp = jax.nn.log_softmax(logits)
    ce = -np.take_along_axis(np.asarray(logp), np.asarray(targets)[..., None], -1)[..., 0]
    lse = np.log(np.exp(np.asarray(logits)).sum(-1))
    m = np.asarray(mask)
    np.testing.assert_allclose(out["ce"], (ce * m).sum(), rtol=1e-5)
    np.testing.assert_allclose(out["total"], (ce * m).sum() + 1e-2 * (lse ** 2 * m).sum(), rtol=1e-5)
    assert float(out["tokens"]) == 8


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    two = jax.devices()[:2]
    one = train(tiny_run_config(tmp_path / "a", steps=3, mesh=(2, 1, 1), checkpoint={"every": 0}),
                batch_source=token_batches, quiet=True, devices=two)
    acc = train(tiny_run_config(tmp_path / "b", steps=3, mesh=(2, 1, 1), micro_batches=4, checkpoint={"every": 0}),
                batch_source=token_batches, quiet=True, devices=two)
    for s in (1, 2, 3):
        assert abs(one.losses[s] - acc.losses[s]) < 1e-5
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(acc.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_lora_finetune_from_a_model_dir_trains_only_the_adapters(tmp_path):
    pytest.importorskip("jaxlm.lora.adapters")
    base_cfg = tiny_run_config(tmp_path / "unused")
    from jaxlm.model import build_model

    base = build_model(base_cfg.model, seed=3)
    save_model(tmp_path / "base", base_cfg, base)
    cfg = tiny_run_config(tmp_path / "lora", steps=3, init_from=str(tmp_path / "base"), checkpoint={"every": 0})
    from jaxlm.lora import LoraConfig

    cfg = dataclasses.replace(cfg, lora=LoraConfig(enabled=True, rank=4))
    result = train(cfg, batch_source=token_batches, quiet=True)
    assert sorted(result.losses) == [1, 2, 3]
    _, tuned = load_model(tmp_path / "lora")  # a LoRA run dir: base + adapters
    base_params = nnx.state(base, nnx.Param).to_pure_dict()
    np.testing.assert_array_equal(np.asarray(tuned.embed[...]), np.asarray(base_params["embed"]))
    lora = nnx.state(tuned, nnx.LoRAParam)
    lora_b = [x for p, x in jax.tree_util.tree_flatten_with_path(lora.to_pure_dict())[0] if "lora_b" in str(p)]
    assert lora_b and all(float(jnp.abs(x).max()) > 0 for x in lora_b)  # B starts at zero; training moved it


def test_validation_in_the_loop_equals_a_direct_evaluation_and_ranks_keep_best(tmp_path):
    import itertools
    import math

    from jaxlm.checkpoint.locate import finished_steps

    from train_helpers import TokenBatches

    out = tmp_path / "run"
    cfg = tiny_run_config(out, steps=6, checkpoint={"every": 2, "keep": 1, "keep_best": 1}, eval_every=3,
                          log_every=100)
    evals = lambda p, n, b: itertools.islice(TokenBatches(p, n, b, seed=7), 3)  # noqa: E731
    result = train(cfg, batch_source=token_batches, eval_source=evals)
    assert sorted(result.val_losses) == [2, 3, 4, 6]  # every eval_every steps and at every checkpoint
    records = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    for step, val in result.val_losses.items():
        assert records[step]["val_loss"] == val and math.isclose(records[step]["val_ppl"], math.exp(val))
        assert records[step]["val_tokens"] == 3 * 8 * 32
    # The same number from the saved model, computed directly (full logits, no chunking, no mesh).
    model = load_model(out / "checkpoints" / "6")[1]
    nll, count = 0.0, 0
    for b in evals(0, 1, 8):
        logits = model(jnp.asarray(b["inputs"]), positions=jnp.asarray(b["positions"]),
                       segment_ids=jnp.asarray(b["segment_ids"]))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll -= float(jnp.sum(jnp.take_along_axis(logp, jnp.asarray(b["targets"])[..., None], axis=-1)))
        count += b["targets"].size
    assert abs(nll / count - result.val_losses[6]) < 1e-5
    # keep_best ranks by the validation loss: Orbax writes it as each checkpoint's metric (so a resumed
    # run still knows the ranking).
    best = min((2, 4, 6), key=result.val_losses.get)
    assert finished_steps(out / "checkpoints") == sorted({best, 6})
    for step in finished_steps(out / "checkpoints"):
        saved = json.loads((out / "checkpoints" / str(step) / "metrics" / "metrics").read_text())
        assert saved == {"loss": result.val_losses[step]}
        meta = json.loads((out / "checkpoints" / str(step) / "meta" / "metadata").read_text())
        assert meta["val_loss"] == result.val_losses[step] and meta["loss"] == result.losses[step]
