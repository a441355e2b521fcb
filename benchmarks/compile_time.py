"""Compile time of the full train step (forward, backward, AdamW) from abstract shapes: no weights allocated.

    python benchmarks/compile_time.py [--configs openelm_3b phi3_mini_4k] [--seq-len 2048]

For each config it lowers and compiles the jitted step: with layer grouping (identical
consecutive layers stacked and run by one lax.scan; model.scan_layers=true), without
(every layer its own block; scan_layers=false), and with FFN-padded grouping (layers that differ
only in FFN width share a scan; model.scan_pad_ffn=true), and prints the number of distinct blocks and
the seconds spent in lowering and in XLA compilation. Runs on whatever backend JAX finds
(one device, mesh (1, 1, 1)).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp


def compile_step(run_cfg, seq_len: int, batch: int) -> tuple[float, float, int]:
    """(lower seconds, compile seconds, number of layer groups) for run_cfg's train step."""
    from jaxlm.model import abstract_model
    from jaxlm.parallel import make_mesh, param_shardings, rules
    from jaxlm.training.optimizer import make_optimizer, opt_state_shardings
    from jaxlm.training.state import logical_axes, split_model
    from jaxlm.training.step import BATCH_KEYS, jit_train_step, make_train_step

    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    split, params_abs, rest_abs = split_model(abstract_model(run_cfg.model), run_cfg)
    axes = logical_axes(split.trainable)
    p_shard = param_shardings(axes, params_abs, mesh)
    tx, _ = make_optimizer(run_cfg.train, axes)
    o_shard = opt_state_shardings(tx, params_abs, p_shard, mesh)
    step = jit_train_step(make_train_step(split, tx, micro_batches=1, z_loss=1e-4), mesh,
                          {"params": p_shard, "opt_state": o_shard}, {})
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    state = {"params": jax.tree.map(sds, params_abs, p_shard),
             "opt_state": jax.tree.map(sds, jax.eval_shape(tx.init, params_abs), o_shard)}
    bs = rules.batch_sharding(mesh)
    batch_abs = {k: jax.ShapeDtypeStruct((batch, seq_len), jnp.float32 if k == "loss_mask" else jnp.int32,
                                         sharding=bs) for k in BATCH_KEYS}
    t0 = time.perf_counter()
    lowered = step.lower(state, {}, batch_abs)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, blocks_compiled(run_cfg.model)


def blocks_compiled(model_cfg) -> int:
    """Distinct scanned blocks: stored layer groups, or runs of them with scan_pad_ffn."""
    if not model_cfg.scan_pad_ffn:
        return len(model_cfg.layer_groups)
    keys = [(s.num_query_heads, s.num_kv_heads) for s, _ in model_cfg.layer_groups]
    return sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])


def main() -> None:
    from jaxlm.config import load_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["openelm_3b", "phi3_mini_4k"])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["on", "off", "pad"], choices=["on", "off", "pad"],
                    help="on: identical layers scanned; off: every layer its own block; "
                         "pad: also scan layers differing only in FFN width (model.scan_pad_ffn)")
    args = ap.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), seq {args.seq_len}, batch {args.batch}")
    print(f"| config | layers | grouping | blocks compiled | lower (s) | compile (s) |\n|---|---|---|---|---|---|")
    for name in args.configs:
        base = load_run_config(name)
        for mode in args.modes:
            model = dataclasses.replace(base.model, scan_layers=mode != "off", scan_pad_ffn=mode == "pad")
            cfg = dataclasses.replace(base, model=model)
            lower_s, compile_s, groups = compile_step(cfg, args.seq_len, args.batch)
            print(f"| {name} | {cfg.model.num_layers} | {mode} | {groups} | {lower_s:.1f} | "
                  f"{compile_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
