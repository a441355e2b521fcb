"""MFU of the sharded train step on an accelerator (target: OpenELM-1.1B at seq 2048, >= 50% on an H200).

    python benchmarks/bench_mfu.py [--config openelm_1_1b] [--seq-len 2048] [--batch 8] [--steps 10]
        [--set model.remat=dots ...]

Uses every local device on a mesh (data=1, fsdp=all, tensor=1), bf16 compute with f32 parameters
(the config's dtypes), random tokens. MFU = FLOPs/token (6N + 12 * sum(Hq * hd) * T, causal not
halved; jaxlm.model.flops) x tokens/s / (peak bf16 FLOP/s per device x devices), peak from
jaxlm.training.metrics.PEAK_FLOPS. On a CPU there is no peak: the script says so and stops
unless --allow-cpu is given (then it reports tokens/s only).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


def main() -> None:
    from jaxlm.config import load_run_config
    from jaxlm.model import flops
    from jaxlm.parallel import make_mesh, param_shardings, rules
    from jaxlm.training.metrics import peak_flops_per_device
    from jaxlm.training.optimizer import make_optimizer, opt_state_shardings
    from jaxlm.training.program import initial_params
    from jaxlm.training.state import logical_axes, split_model
    from jaxlm.training.step import BATCH_KEYS, jit_train_step, make_train_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="openelm_1_1b")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--allow-cpu", action="store_true")
    args = ap.parse_args()
    peak = peak_flops_per_device()
    kind = jax.devices()[0].device_kind
    if peak is None and not args.allow_cpu:
        print(f"backend {jax.default_backend()} ({kind}): no peak FLOP/s known, MFU not measured "
              f"(run on a GPU/TPU, or pass --allow-cpu for tokens/s only)")
        return
    run_cfg = load_run_config(args.config, args.overrides)
    n = jax.device_count()
    mesh = make_mesh(1, n, 1)
    from jaxlm.model import abstract_model

    split, params_abs, _ = split_model(abstract_model(run_cfg.model), run_cfg.lora)
    axes = logical_axes(split.trainable)
    p_shard = param_shardings(axes, params_abs, mesh)
    params, rest = initial_params(run_cfg, p_shard, {})
    tx, _ = make_optimizer(run_cfg.train, axes)
    o_shard = opt_state_shardings(tx, params_abs, p_shard, mesh)
    step = jit_train_step(make_train_step(split, tx, micro_batches=1, z_loss=1e-4), mesh,
                          {"params": p_shard, "opt_state": o_shard}, {})
    state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=o_shard)(params)}
    b, t = args.batch, args.seq_len
    x = np.random.default_rng(0).integers(0, run_cfg.model.vocab_size, (b, t + 1), dtype=np.int32)
    host = {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            "loss_mask": np.ones((b, t), np.float32)}
    batch = {k: jax.device_put(host[k], rules.batch_sharding(mesh)) for k in BATCH_KEYS}
    t0 = time.perf_counter()
    state, m = step(state, {}, batch)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, m = step(state, {}, batch)
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / args.steps
    tps = b * t / dt
    fpt = flops.train_flops_per_token(run_cfg.model, t)
    print(f"{args.config} on {n} x {kind}: batch {b} x seq {t}, compute {run_cfg.model.compute_dtype}, "
          f"remat {run_cfg.model.remat}; first step {compile_s:.1f} s")
    print(f"step {dt * 1000:.1f} ms, {tps:,.0f} tokens/s, {fpt / 1e9:.2f} GFLOP/token, loss {float(m['loss']):.3f}")
    if peak:
        print(f"MFU {fpt * tps / (peak * n):.1%} (peak {peak / 1e12:.0f} TFLOP/s per device)")


if __name__ == "__main__":
    main()
