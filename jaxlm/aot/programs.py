"""The programs `jaxlm compile` builds on a mesh: the train step, and the generate pair (prefill +
decode loop). Abstract shapes only, so a 3B or 8B model needs no memory on the host."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.inference import engine
from jaxlm.inference.sampling import SamplingParams
from jaxlm.lora.config import LoraConfig
from jaxlm.parallel import param_shardings, rules, use_mesh
from jaxlm.training.program import build_train_program, check_batch, with_shardings
from jaxlm.training.state import logical_axes
from jaxlm.variants import model_for


def train_program(run_cfg, mesh: Mesh):
    """(name, lowered train step) for run_cfg's model, optimizer, batch size and sequence length."""
    tc = run_cfg.train
    check_batch(tc, mesh, process_count=1, max_context=run_cfg.model.max_context)
    program = build_train_program(run_cfg, mesh)
    lowered = program.step_fn.lower(*program.abstract_args(tc.batch_size, tc.seq_len))
    return train_program_name(tc), lowered


def train_program_name(train_cfg) -> str:
    return f"train step (batch {train_cfg.batch_size} x {train_cfg.seq_len} tokens)"


def decode_programs(run_cfg, mesh: Mesh, batch_size: int, prompt_len: int, new_tokens: int,
                    cache_dtype: str = "auto"):
    """[(name, lower)] for prefill and the decode loop. `lower(prev_output_shardings)` lowers a program;
    decode takes the cache in the sharding the compiled prefill left it in."""
    cfg = run_cfg.model
    cache_dtype = cfg.compute_dtype if cache_dtype == "auto" else cache_dtype
    out_len = engine.round_up(new_tokens, engine.BUCKET)
    width = engine.round_up(prompt_len, engine.BUCKET)
    cache_len = min(cfg.max_context, width + out_len)
    graphdef, state = nnx.split(model_for(cfg, run_cfg.quant, LoraConfig(), abstract=True))  # decode: no adapters
    pure = state.to_pure_dict()
    state.replace_by_pure_dict(with_shardings(pure, param_shardings(logical_axes(state), pure, mesh)))
    rows = _rows_sharding(mesh, batch_size)
    replicated = NamedSharding(mesh, P())
    ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows if shape else replicated)  # noqa
    knobs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                         SamplingParams().as_arrays())
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
    sampler = engine.Sampler(ints(batch_size, 1), knobs, key, ints())
    prefill_options = engine.DecodeOptions(cache_len=cache_len, cache_dtype=cache_dtype, greedy=True)
    decode_options = engine.DecodeOptions(out_len=out_len, greedy=True, stream=False)

    def prefill(params, tokens, lengths, sampler):
        with use_mesh(mesh):
            return engine.prefill(graphdef, params, tokens, lengths, sampler, prefill_options)

    def decode(params, decode_state, sampler, max_new):
        with use_mesh(mesh):
            return engine.decode(graphdef, params, decode_state, sampler, max_new, jnp.int32(0), decode_options)

    def lower_prefill(_):
        return jax.jit(prefill).lower(state, ints(batch_size, width), ints(batch_size), sampler)

    def lower_decode(prefill_shardings):
        state_abs = jax.eval_shape(prefill, state, ints(batch_size, width), ints(batch_size), sampler)[1]
        decode_state = with_shardings(state_abs, prefill_shardings[1])
        return jax.jit(decode).lower(state, decode_state, sampler, ints())

    return [(f"prefill (batch {batch_size} x {width} prompt tokens, cache {cache_len})", lower_prefill),
            (f"decode loop ({out_len} tokens)", lower_decode)]


def _rows_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """Rows over the batch axes when they divide the batch, else replicated."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    return rules.batch_sharding(mesh, 1) if batch_size % ways == 0 else NamedSharding(mesh, P())
