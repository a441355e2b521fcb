"""A decode step reads each weight once: the compiler's bytes accessed against weights + cache.

`jaxlm.inference.cost.decode_step_cost` compiles one step of the decode loop (the Engine's layer
layout for the target) and reports XLA's cost analysis. On a CPU, f32 decode once moved about
three times the weight bytes (each layer's weights copied out of the scanned stack, the attention
output weight transposed, the cache transposed twice per layer); the bounds below fail if any of
that comes back. Quantized weights on the CPU dequantize a chunk of K at a time into cache-sized
float32 temporaries, which the cost analysis counts as bytes accessed (docs/inference.md), so only
the float formats are bounded here; that the chunks stay small is checked in
test_kernels_qmatmul_streamed.py, and the TPU kernels' reads of packed codes in test_kernels_qmatmul.py.
"""

from __future__ import annotations

import importlib.util

import jax
import pytest

from jaxlm.config import load_run_config
from jaxlm.inference import cost, engine
from jaxlm.model.layouts import to_unrolled

SMALL = ["model.vocab_size=4096", "model.model_dim=512", "model.num_layers=4", "model.head_dim=64",
         "model.num_query_heads=8", "model.num_kv_heads=2", "model.ffn_dim=1536", "model.max_context=512"]
# bytes accessed / (stored weights + KV cache), per batch size. At batch 8 this config measures
# 1.36: XLA's cost analysis counts a gather of 8 embedding rows as reading the whole table, and the
# per-row cache scatter as reading and writing the whole cache (both measured alone below). Net of
# those two counts the step is at 1.08, which the second test holds at 1.2.
BOUND = {1: 1.2, 8: 1.4}


def _overcount(model_cfg, batch: int, cache_len: int) -> float:
    """What the cost analysis adds for the embedding gather and the cache scatter beyond the bytes
    they touch: each op compiled alone at the step's shapes, minus its rows."""
    import jax.numpy as jnp

    from jaxlm.model import kv_cache

    f32, i32 = jnp.float32, jnp.int32
    table = jax.ShapeDtypeStruct((model_cfg.vocab_size, model_cfg.model_dim), f32)
    ids = jax.ShapeDtypeStruct((batch,), i32)
    gather = jax.jit(lambda e, i: jnp.take(e, i, axis=0)).lower(table, ids).compile().cost_analysis()
    extra = gather["bytes accessed"] - 2 * batch * model_cfg.model_dim * 4  # rows read + written
    for group in jax.eval_shape(lambda: kv_cache.init_cache(model_cfg, batch, cache_len, f32)):
        one = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in group.items()}
        kv = jax.ShapeDtypeStruct((batch, 1) + one["k"].shape[1:2] + one["k"].shape[3:], f32)
        write = jax.jit(lambda c, k, v, s: kv_cache.update_layer(c, k, v, s)[0], donate_argnums=0)
        scatter = write.lower(one, kv, kv, ids).compile().cost_analysis()
        extra += group["k"].shape[0] * (scatter["bytes accessed"] - 4 * kv.size * 4)
    return extra


@pytest.mark.parametrize("batch", [1, 8])
def test_net_of_gather_and_scatter_counts_a_cpu_decode_step_is_within_1_2(batch):
    rc = load_run_config("tiny_uniform", SMALL + ["model.param_dtype=float32", "model.compute_dtype=float32"])
    c = cost.decode_step_cost(rc.model, rc.quant, batch, cache_len=128)
    net = (c.bytes_accessed - _overcount(rc.model, batch, 128)) / (c.weight_bytes + c.cache_bytes)
    print(f"batch {batch}: ratio {c.ratio:.3f}, net of the gather and scatter counts {net:.3f}")
    assert net <= 1.2


# float32 only: XLA:CPU upcasts a bf16 weight to f32 before its dot (2x-5x the bytes; docs/inference.md),
# which is the CPU's limit rather than jaxlm's layout.
@pytest.mark.parametrize("batch", [1, 8])
def test_a_cpu_decode_step_reads_each_weight_about_once(batch):
    rc = load_run_config("tiny_uniform", SMALL + ["model.param_dtype=float32", "model.compute_dtype=float32"])
    c = cost.decode_step_cost(rc.model, rc.quant, batch, cache_len=128)
    print(f"batch {batch}: {c.bytes_accessed / 1e6:.1f} MB accessed, weights {c.weight_bytes / 1e6:.1f} MB, "
          f"cache {c.cache_bytes / 1e6:.2f} MB, ratio {c.ratio:.2f}")
    assert c.ratio <= BOUND[batch]


def test_the_scanned_layout_is_what_the_bound_catches():
    """The same step with scanned layers copies each layer's weights: the measure can fail."""
    rc = load_run_config("tiny_uniform", SMALL + ["model.param_dtype=float32", "model.compute_dtype=float32"])
    scanned = cost.decode_step_cost(rc.model, rc.quant, 1, cache_len=128, layers="scan")
    # The scan's body is counted once (1 of 4 layers), so compare per weight byte of that body.
    layer_bytes = (scanned.weight_bytes - 4096 * 512 * 4) / 4
    assert scanned.bytes_accessed > 4096 * 512 * 4 + 2 * layer_bytes


def test_unstacked_model_gives_the_same_logits_and_one_group_per_layer():
    import jax.numpy as jnp

    from jaxlm.model import build_model

    model = build_model(load_run_config("tiny_uniform").model)
    flat = to_unrolled(model)
    assert len(model.groups) == 1 and len(flat.groups) == model.cfg.num_layers
    tokens = jnp.array([[5, 6, 7, 8, 9, 10]])
    assert float(jnp.max(jnp.abs(model(tokens) - flat(tokens)))) < 1e-4


def test_engine_layout_per_platform_and_bad_name():
    from jaxlm.errors import JaxlmError
    from jaxlm.model import abstract_model

    m = abstract_model(load_run_config("tiny_uniform").model)
    assert len(engine.decode_layout(m, "auto", "cpu").groups) == m.cfg.num_layers
    assert engine.decode_layout(m, "auto", "tpu") is m
    with pytest.raises(JaxlmError, match="unknown layers layout"):
        engine.decode_layout(m, "sideways")
    assert jax.default_backend() == "cpu"


def _copied_bytes(hlo: str) -> int:
    """Bytes written by the copies and converts of float or integer arrays in the program's entry
    computation: relayouts and upcasts (the compiler's async prefetches are copy-start, not counted)."""
    import math
    import re

    entry = hlo[hlo.index("\nENTRY"):]
    size = {"bf16": 2, "f32": 4, "s8": 1, "u8": 1}
    return sum(math.prod(int(d) for d in dims.split(",") if d) * size[dt] for dt, dims in
               re.findall(r"= (bf16|f32|s8|u8)\[([0-9,]*)\]\{[^}]*\} (?:copy|convert)\(", entry))


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install -e '.[tpu]'); CI installs it")
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dtype, quant", [("bfloat16", []), ("float32", []), ("bfloat16", ["quant.bits=8"])])
def test_a_tpu_decode_step_reads_weights_in_place(dtype, quant, batch):
    """Compiled for a v5e chip by libtpu: no weight and no cache is copied or upcast per step. Before,
    the (D, 2, F) FFN weight was relaid out as (D, 2F), and at bf16 every weight converted to f32
    (copies: 2.15x the weight bytes for bf16, 0.44x for f32 at batch 1); at batch 8 the row scatter
    into the cache left it in another layout, copied back per layer (0.15x). Now at most 0.002x."""
    from jaxlm.aot import topology_devices

    rc = load_run_config("tiny_uniform", SMALL + [f"model.param_dtype={dtype}", f"model.compute_dtype={dtype}"] + quant)
    c = cost.decode_step_cost(rc.model, rc.quant, batch, cache_len=128, device=topology_devices("v5e:2x2")[0],
                              layers="unroll")
    assert _copied_bytes(c.hlo) < 0.02 * c.weight_bytes, (_copied_bytes(c.hlo), c.weight_bytes)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_the_tpu_cache_write_by_select_equals_the_slice_write(monkeypatch, dtype):
    """One token per row, several rows: the select the TPU path uses writes what dynamic_update_slice
    writes, out-of-range positions clamped alike."""
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.model import kv_cache

    cfg = load_run_config("tiny_uniform", SMALL).model
    cache = jax.tree.map(lambda x: x[0], kv_cache.init_cache(cfg, 4, 16, dtype)[0])
    cache = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape).astype(x.dtype), cache)
    k, v = (jax.random.normal(jax.random.key(i), (4, 1, cfg.layer_specs[0].num_kv_heads, cfg.head_dim))
            for i in (2, 3))
    start = jnp.array([0, 7, 15, 19])  # 19 is past the 16 slots: clamped to the last one
    by_slice = kv_cache.update_layer(cache, k, v, start)
    monkeypatch.setattr(kv_cache, "target_platform", lambda: "tpu")
    by_select = kv_cache.update_layer(cache, k, v, start)
    for a, b in zip(jax.tree.leaves(by_slice), jax.tree.leaves(by_select)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
