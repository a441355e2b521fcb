"""What one decode step reads: the compiler's "bytes accessed" against the bytes that must be read.

A decode step at batch B has to read every stored weight once (codes and scales of a quantized
one) and the live part of the KV cache. `decode_step_cost` compiles one step (`engine.decode_step`,
the body of the decode loop) from abstract shapes, for the CPU or for TPU devices of a topology
(`jaxlm.aot.topology_devices`), and reports the compiler's cost analysis beside those bytes, so a
layout that copies weights or a matmul that materialises a dequantized weight shows as a ratio
above 1 (tests/test_decode_cost.py holds it at 1.2 for batch 1 on a CPU).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.inference import engine
from jaxlm.inference.sampling import SamplingParams
from jaxlm.lora.config import LoraConfig
from jaxlm.model import kv_cache
from jaxlm.parallel import use_mesh
from jaxlm.variants import model_for


@dataclasses.dataclass(frozen=True)
class StepCost:
    bytes_accessed: float  # the compiler's cost analysis of one decode step
    weight_bytes: int  # every stored parameter array (codes + scales for quantized weights)
    cache_bytes: int  # the whole KV cache (every slot is live in the step measured)
    flops: float
    hlo: str = dataclasses.field(default="", repr=False)  # the optimized program, for reading what it does

    @property
    def ratio(self) -> float:
        """bytes accessed / (weights + cache): 1.0 reads each byte once."""
        return self.bytes_accessed / (self.weight_bytes + self.cache_bytes)


def decode_step_cost(model_cfg, quant_cfg, batch_size: int, cache_len: int, cache_dtype: str = "auto",
                     device=None, layers: str = "auto") -> StepCost:
    """Compile one greedy decode step of `model_cfg` (quantized by `quant_cfg`) at batch_size rows
    against a cache of cache_len slots, for `device` (default: the first local device), in the
    layer layout the Engine uses there (`layers`, see `engine.Engine`)."""
    device = device or jax.devices()[0]
    cache_dtype = model_cfg.compute_dtype if cache_dtype == "auto" else cache_dtype
    platform = "gpu" if device.platform in ("cuda", "rocm") else device.platform
    model = engine.decode_layout(model_for(model_cfg, quant_cfg, LoraConfig(), abstract=True), layers, platform)
    model_cfg = model.cfg
    graphdef, params = nnx.split(model)
    b = batch_size
    decode_state = engine.DecodeState(
        jax.eval_shape(lambda: kv_cache.init_cache(model_cfg, b, cache_len, cache_dtype)),
        jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32),
        jax.ShapeDtypeStruct((b, model_cfg.vocab_size), jnp.bool_), jax.ShapeDtypeStruct((b,), jnp.bool_))
    sampler = engine.Sampler(jax.ShapeDtypeStruct((b, 1), jnp.int32), jax.eval_shape(SamplingParams().as_arrays),
                             jax.eval_shape(lambda: jax.random.key(0)), jax.ShapeDtypeStruct((), jnp.int32))
    mesh = jax.sharding.Mesh([[[device]]], ("data", "fsdp", "tensor"))

    def step(params, state, sampler):
        with use_mesh(mesh):
            return engine.decode_step(nnx.merge(graphdef, params), state, jnp.int32(1), sampler, greedy=True)

    sharding = jax.sharding.SingleDeviceSharding(device)
    args = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        (params, decode_state, sampler))
    compiled = jax.jit(step, donate_argnums=1).lower(*args).compile()  # the loop updates its state in place
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    weights = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
    cache = kv_cache.cache_bytes(model_cfg, b, cache_len, cache_dtype)
    return StepCost(float(cost["bytes accessed"]), weights, cache, float(cost.get("flops", 0.0)), compiled.as_text())
