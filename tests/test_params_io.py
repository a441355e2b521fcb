"""Saved params one array (or one layer) at a time: model dirs stored per layer and stacked again on
load, older stacked model dirs, training checkpoints chunked per layer, and conversion that
interleaves reading and writing instead of holding the model."""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxlm.checkpoint import load_model, params_io, save_model
from jaxlm.checkpoint.locate import locate
from jaxlm.checkpoint.params_io import ParamReader, ParamWriter
from jaxlm.config import load_run_config
from jaxlm.errors import JaxlmError
from jaxlm.model import build_model
from jaxlm.model.layouts import flatten, per_layer_leaves


def flat_params(model) -> dict:
    return {p: np.asarray(x) for p, x in flatten(nnx.state(model, nnx.Param).to_pure_dict()).items()}


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for p in a:
        assert a[p].dtype == b[p].dtype and a[p].tobytes() == b[p].tobytes(), p


@pytest.fixture(scope="module")
def uniform():
    run_cfg = load_run_config("tiny_uniform", ["model.param_dtype=bfloat16"])
    return run_cfg, build_model(run_cfg.model, seed=3)


def test_model_dir_stores_each_layer_and_loads_stacked(uniform, tmp_path):
    run_cfg, model = uniform
    want = flat_params(model)
    save_model(tmp_path / "m", run_cfg, model)
    _, params_dir = locate(tmp_path / "m")
    assert params_dir == tmp_path / "m" / "params" / "state"
    reader = ParamReader(params_dir)
    w_in = want[("groups", "0", "ffn", "w_in")]
    assert not any(p[0] == "groups" for p in reader.shapes)
    for i in range(6):  # one leaf per layer, equal to that layer of the stack
        got = reader.read(("layers", str(i), "ffn", "w_in"))
        assert got.shape == w_in.shape[1:] and got.tobytes() == w_in[i].tobytes()
    assert_same(flat_params(load_model(tmp_path / "m")[1]), want)

    # Not tied to the grouping: the same dir loads into an unscanned model (one group per layer).
    unscanned = load_run_config("tiny_uniform", ["model.param_dtype=bfloat16", "model.scan_layers=false"]).model
    got = flat_params(load_model(tmp_path / "m", model_config=unscanned)[1])
    assert got[("groups", "4", "ffn", "w_in")].tobytes() == w_in[4:5].tobytes()

    # A config with other shapes names the layer and both shapes.
    other = load_run_config("tiny_uniform", ["model.param_dtype=bfloat16", "model.ffn_dim=512"]).model
    with pytest.raises(JaxlmError, match=r"layers/0/ffn/w_in: checkpoint \(256, 2, 640\) vs config \(256, 2, 512\)"):
        load_model(tmp_path / "m", model_config=other)


def test_stacked_model_dir_from_before_still_loads_and_converts(uniform, tmp_path):
    """A model dir whose params/ is one plain Orbax PyTree save of the stacked tree."""
    from jaxlm.convert import to_hf

    run_cfg, model = uniform
    save_model(tmp_path / "new", run_cfg, model)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text((tmp_path / "new" / "config.yaml").read_text())
    with ocp.StandardCheckpointer() as ck:
        ck.save(old / "params", nnx.state(model, nnx.Param).to_pure_dict())
    assert locate(old)[1] == old / "params"
    assert_same(flat_params(load_model(old)[1]), flat_params(model))
    reader = ParamReader(old / "params")
    assert not reader.layer_chunked(("groups", "0", "ffn", "w_in"))  # one chunk: read whole, sliced in memory
    to_hf(old, tmp_path / "hf_old")
    to_hf(tmp_path / "new", tmp_path / "hf_new")
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "hf_old" / f).read_bytes() == (tmp_path / "hf_new" / f).read_bytes()


def test_writer_batches_and_failed_save_leaves_nothing(uniform, tmp_path, monkeypatch):
    run_cfg, model = uniform
    leaves = dict(per_layer_leaves(flat_params(model)))
    writer = ParamWriter(tmp_path / "p", batch_bytes=1)  # every leaf its own partial save
    writer.put_all(leaves.items())
    writer.close()
    assert writer.saves == len(leaves) and [p.name for p in tmp_path.iterdir()] == ["p"]
    reader = ParamReader(tmp_path / "p")
    assert_same({p: reader.read(p) for p in reader.shapes}, leaves)

    real, calls = ParamWriter.put, []

    def put(self, path, array):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, path, array)

    monkeypatch.setattr(ParamWriter, "put", put)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "m", run_cfg, model)
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


def test_training_checkpoints_are_chunked_per_layer(tmp_path):
    """The trainer's Orbax saves store stacked leaves one layer per chunk, so to-hf reads one layer."""
    from jaxlm.checkpoint.run_checkpoints import RunCheckpoints

    run_cfg = load_run_config("tiny_uniform")
    model = build_model(run_cfg.model, seed=0)
    ckpt = RunCheckpoints(tmp_path / "checkpoints", every=1, keep=1, keep_best=0, async_save=False)
    ckpt.save(1, nnx.state(model, nnx.Param).to_pure_dict(), {"count": np.zeros(())}, {"step": 1}, loss=1.0)
    ckpt.close()
    reader = ParamReader(tmp_path / "checkpoints" / "1" / "params")
    want = flat_params(model)
    for path in reader.shapes:
        assert reader.layer_chunked(path) == (path[0] == "groups"), path
    for j in range(6):
        path = ("groups", "0", "attn", "qkv")
        assert reader.read_layer(path, j).tobytes() == want[path][j].tobytes()


def test_from_hf_interleaves_reading_and_writing(tmp_path, monkeypatch):
    """HF tensors are read while earlier ones are already saved: the writer never waits for the whole
    model. (Peak memory itself: benchmarks/bench_convert_memory.py.)"""
    from jaxlm.convert import from_hf, hf_io, to_hf

    run_cfg = load_run_config("tiny_uniform")
    save_model(tmp_path / "src", run_cfg, build_model(run_cfg.model, seed=1))
    to_hf(tmp_path / "src", tmp_path / "hf")
    n_hf = len(hf_io.HFReader(tmp_path / "hf").keys())

    events = []
    real_get, real_flush = hf_io.HFReader.get, ParamWriter._flush
    monkeypatch.setattr(hf_io.HFReader, "get", lambda self, n: events.append("get") or real_get(self, n))
    monkeypatch.setattr(ParamWriter, "_flush", lambda self: (events.append("save") if self._batch else None)
                        or real_flush(self))
    monkeypatch.setattr(params_io, "BATCH_BYTES", 2**20)  # several partial saves for this ~2 MB model
    from_hf(tmp_path / "hf", tmp_path / "back")
    assert events.count("get") == n_hf and events.count("save") >= 2
    last_get = len(events) - 1 - events[::-1].index("get")
    assert events.index("save") < last_get  # saving began long before reading ended
    assert_same(flat_params(load_model(tmp_path / "back")[1]), flat_params(load_model(tmp_path / "src")[1]))
