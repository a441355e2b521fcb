"""Prepared shards (`jaxlm data prepare`, jaxlm/data/prepared.py): the rows on disk are the
pipeline's rows; any number of processes together read each global batch once, each only its own
rows; resume at any step continues exactly and reads no earlier row; mixtures still apply."""

import dataclasses
import json
import random

import numpy as np
import pytest

from jaxlm.assets import ASSETS_DIR
from jaxlm.cli.main import main
from jaxlm.data import DataConfig, SourceConfig, make_batch_iterator, make_eval_iterator
from jaxlm.data.config import PhaseConfig
from jaxlm.data.packing import FIELDS
from jaxlm.data.prepared import PreparedBatches, prepare, read_meta
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.tokenizer import load_tokenizer

TRAIN = ASSETS_DIR / "corpus" / "train"
SEQ = 64


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bundled:tokenizer")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok):
    """Two sources (two plays, and three others), prepared once; (data config, folder)."""
    root = tmp_path_factory.mktemp("prep")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for name in ("macbeth.txt",):
        (root / "a" / name).write_text((TRAIN / name).read_text())
    for name in ("hamlet.txt", "twelfth_night.txt", "julius_caesar.txt"):
        (root / "b" / name).write_text((TRAIN / name).read_text())
    cfg = DataConfig(sources=(SourceConfig(path=str(root / "a"), name="a", weight=1.0),
                              SourceConfig(path=str(root / "b"), name="b", weight=3.0)), prefetch=0)
    prepare(cfg, tok, root / "prepared", seq_len=SEQ)
    return dataclasses.replace(cfg, prepared=str(root / "prepared")), root / "prepared"


def test_the_rows_on_disk_are_the_pipelines_rows_in_file_order(prepared, tok):
    cfg, folder = prepared
    meta = read_meta(folder)
    assert [s["label"] for s in meta["sources"]] == ["a", "b"] and meta["seq_len"] == SEQ
    for i, src in enumerate(cfg.sources):
        rows = list(make_eval_iterator(cfg, tok, seq_len=SEQ, batch_size=1, sources_=(src,)))
        assert len(rows) == meta["sources"][i]["rows"] > 100
        for f in FIELDS:
            disk = np.fromfile(folder / str(i) / f"{f}.bin", np.float32 if f == "loss_mask" else np.int32)
            np.testing.assert_array_equal(disk.reshape(-1, SEQ), np.concatenate([r[f] for r in rows]))


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_together_read_each_global_batch_once_and_only_their_own_rows(prepared, tok, processes):
    cfg, folder = prepared
    single = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=8, seed=3)
    single.rows_read = []
    parts = [PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=8 // processes, seed=3, process_index=p,
                             process_count=processes) for p in range(processes)]
    for p in parts:
        p.rows_read = []
    steps = int(max(single.rows[0] / 2, single.rows[1] / 6)) + 3  # past one epoch of both (2 and 6 rows a step)
    for _ in range(steps):
        want = next(single)
        got = [next(p) for p in parts]
        for f in FIELDS:
            np.testing.assert_array_equal(np.concatenate([g[f] for g in got]), want[f])
    # Each process read only its slice of every global batch: in process order they are the single reader's rows.
    merged = [row for step in range(steps) for p in parts for row in p.rows_read[step * (8 // processes):
                                                                              (step + 1) * (8 // processes)]]
    assert merged == single.rows_read
    for k, n in enumerate(single.rows):  # within an epoch each row of a source comes exactly once
        first_epoch = [r for s, r in single.rows_read if s == k][:n]
        assert sorted(first_epoch) == list(range(n))


def test_resume_at_random_steps_continues_exactly_and_reads_no_earlier_row(prepared, tok):
    cfg, _ = prepared
    rng = random.Random(0)
    for _ in range(3):
        at = rng.randrange(1, 60)
        ref = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=4, seed=1, process_index=1, process_count=2)
        ref.rows_read = []
        batches = [next(ref) for _ in range(at + 5)]
        resumed = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=4, seed=1, process_index=1, process_count=2)
        scratch = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=4, seed=1, process_index=1, process_count=2)
        for _ in range(at):
            next(scratch)
        resumed.set_state(json.loads(json.dumps(scratch.get_state())))
        resumed.rows_read = []
        for want in batches[at:]:
            got = next(resumed)
            for f in FIELDS:
                np.testing.assert_array_equal(got[f], want[f])
        assert resumed.rows_read == ref.rows_read[at * 4:]  # only the rows of the batches after the state


def test_a_state_saved_by_2_processes_resumes_exactly_on_4(prepared, tok):
    cfg, _ = prepared
    two = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=4, seed=2, process_index=0, process_count=2)
    single = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=8, seed=2)
    for _ in range(7):
        next(two), next(single)
    state = two.get_state()
    four = [PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=2, seed=2, process_index=p, process_count=4)
            for p in range(4)]
    for p in four:
        p.set_state(state)
    for _ in range(3):
        want = next(single)
        got = [next(p) for p in four]
        np.testing.assert_array_equal(np.concatenate([g["inputs"] for g in got]), want["inputs"])


def test_mixture_weights_and_phases_apply_to_prepared_rows(prepared, tok):
    cfg, _ = prepared
    it = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=8, seed=0)
    it.rows_read = []
    for _ in range(10):
        next(it)
    share = sum(1 for s, _ in it.rows_read if s == 0) / len(it.rows_read)
    assert abs(share - 0.25) <= 1 / 80  # weights 1 : 3, exact to within one row
    phased = dataclasses.replace(cfg, phases=(PhaseConfig(0, {"a": 1.0}), PhaseConfig(2, {"b": 1.0})))
    it = make_batch_iterator(phased, tok, seq_len=SEQ, batch_size=4, seed=0)
    it.rows_read = []
    for _ in range(4):
        next(it)
    assert [s for s, _ in it.rows_read] == [0] * 8 + [1] * 8


def test_wrong_seq_len_tokenizer_or_sources_are_clear_errors(prepared, tok, tmp_path):
    cfg, folder = prepared
    with pytest.raises(ConfigError, match="holds rows of 64 tokens, train.seq_len is 32"):
        PreparedBatches(cfg, tok, seq_len=32, batch_size=4, seed=0)
    from jaxlm.tokenizer import TiktokenTokenizer

    with pytest.raises(ConfigError, match="tokenized with another tokenizer"):
        PreparedBatches(cfg, TiktokenTokenizer({bytes([i]): i for i in range(256)}), seq_len=SEQ, batch_size=4, seed=0)
    other = DataConfig(sources=(SourceConfig(path="x", name="c"),), prepared=str(folder))
    with pytest.raises(ConfigError, match=r"holds sources \['a', 'b'\], data.sources names \['c'\]"):
        PreparedBatches(other, tok, seq_len=SEQ, batch_size=4, seed=0)
    with pytest.raises(JaxlmError, match="holds no prepared.json"):
        PreparedBatches(DataConfig(prepared=str(tmp_path)), tok, seq_len=SEQ, batch_size=4, seed=0)


def test_cli_prepare_then_train_from_the_prepared_rows(tmp_path, capsys):
    import yaml

    from jaxlm.training.trainer import train

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"inherit": str(ASSETS_DIR.parent / "configs" / "default.yaml"),
                                        "train": {"seq_len": 32}}))
    assert main(["data", "prepare", str(cfg_path), "--out", str(tmp_path / "prep")]) == 0
    assert "train with --set data.prepared=" in capsys.readouterr().out
    assert main(["data", "prepare", str(cfg_path), "--out", str(tmp_path / "prep")]) == 2  # exists: refused
    assert "exists and is not empty; choose another path or pass --overwrite" in capsys.readouterr().err
    from jaxlm.config import load_run_config

    run_cfg = load_run_config(str(cfg_path), [f"data.prepared={tmp_path / 'prep'}", "train.steps=2",
                                              "train.batch_size=8", f"train.out_dir={tmp_path / 'run'}",
                                              "train.sample_prompt=", "train.eval_every=0", "model.num_layers=2"])
    result = train(run_cfg, quiet=True)
    assert result.step == 2 and all(np.isfinite(list(result.losses.values())))
    meta = json.loads((tmp_path / "run" / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["data_state"][0]["step"] == 2 and "taken" in meta["data_state"][0]  # the O(1) prepared state
