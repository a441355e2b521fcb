"""Sharding rules and mesh equivalence: the same tiny run on four meshes gives the same losses."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxlm.errors import ConfigError
from jaxlm.parallel import logical_to_spec, make_mesh
from jaxlm.training.trainer import train

from train_helpers import tiny_run_config, token_batches


def test_rules_map_logical_axes_and_replicate_when_not_divisible():
    mesh = make_mesh(2, 2, 2)
    qkv_axes = ("layers", "embed", "kv_heads", None, "head_dim")
    assert logical_to_spec(qkv_axes, (3, 64, 4, 4, 16), mesh) == P(None, "fsdp", "tensor", None, None)
    # 3 kv heads do not divide tensor=2: that dimension is replicated, embed still FSDP-sharded.
    assert logical_to_spec(qkv_axes, (3, 64, 3, 4, 16), mesh) == P(None, "fsdp", None, None, None)
    assert logical_to_spec(("vocab", "embed"), (256, 64), mesh) == P("tensor", "fsdp")
    assert logical_to_spec(("layers", "norm"), (3, 64), mesh) == P(None, None)


def test_mesh_not_matching_device_count_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"needs 4 devices but 8 are available"):
        make_mesh(2, 2, 1)


def test_batch_not_divisible_by_data_axes_is_an_error(tmp_path):
    cfg = tiny_run_config(tmp_path / "run", mesh=(4, 2, 1), batch_size=12)
    with pytest.raises(ConfigError, match=r"divisible by mesh data x fsdp = 8"):
        train(cfg, batch_source=token_batches, quiet=True)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_same_losses_on_three_meshes_and_params_sharded_by_the_rules(tmp_path):
    results = {}  # pure data parallelism across processes: test_train_multiprocess
    for mesh in [(2, 4, 1), (2, 2, 2), (1, 1, 1)]:
        cfg = tiny_run_config(tmp_path / "x".join(map(str, mesh)), steps=5, mesh=mesh, checkpoint={"every": 0})
        devices = jax.devices()[:1] if mesh == (1, 1, 1) else None
        results[mesh] = train(cfg, batch_source=token_batches, quiet=True, devices=devices)
    ref = results[(1, 1, 1)].losses
    assert sorted(ref) == [1, 2, 3, 4, 5] and ref[5] < ref[1]
    for mesh, r in results.items():
        np.testing.assert_allclose([r.losses[s] for s in ref], [ref[s] for s in ref], rtol=0, atol=1e-5,
                                   err_msg=f"mesh {mesh}")
    p = results[(2, 2, 2)].params
    assert p["embed"].sharding.spec == P("tensor", "fsdp")
    assert p["groups"][0]["attn"]["qkv"].sharding.spec == P(None, "fsdp", "tensor", None, None)
    assert p["groups"][0]["attn"]["out"].sharding.spec == P(None, "tensor", None, None, "fsdp")
    assert p["groups"][0]["ffn"]["w_in"].sharding.spec == P(None, "fsdp", None, "tensor")
    assert p["groups"][0]["ffn"]["w_out"].sharding.spec == P(None, "tensor", "fsdp")
    w = p["groups"][0]["ffn"]["w_in"]  # (2, 64, 2, 128) split 2 (fsdp) x 2 (tensor) ways
    assert {s.data.shape for s in w.addressable_shards} == {(2, 32, 2, 64)}
    # FSDP shards the optimizer state like the parameters.
    mu = results[(2, 4, 1)].opt_state[1][0].mu  # chain(clip, adamw) -> adamw's scale_by_adam state
    assert mu["groups"][0]["ffn"]["w_in"].sharding.spec == P(None, "fsdp", None, None)
    assert p["final_norm"].sharding.spec == P(None)
