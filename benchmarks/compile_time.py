"""Compile time of the full train step (forward, backward, AdamW) from abstract shapes: no weights allocated.

    python benchmarks/compile_time.py [--configs openelm_3b phi3_mini_4k] [--seq-len 2048]

For each config it lowers and compiles the jitted step: with layer grouping (identical
consecutive layers stacked and run by one lax.scan; model.scan_layers=true), without
(every layer its own block; scan_layers=false), and with layer buckets (similar layers padded to one
shape share a scan; model.scan_pad_budget, 0.03 unless the config sets it), and prints the number of
distinct blocks and
the seconds spent in lowering and in XLA compilation. Runs on whatever backend JAX finds
(one device, mesh (1, 1, 1)).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax


def compile_step(run_cfg, seq_len: int, batch: int) -> tuple[float, float, int]:
    """(lower seconds, compile seconds, number of layer groups) for run_cfg's train step."""
    from jaxlm.parallel import make_mesh
    from jaxlm.training.program import build_train_program

    run_cfg = dataclasses.replace(run_cfg, train=dataclasses.replace(run_cfg.train, micro_batches=1, z_loss=1e-4))
    program = build_train_program(run_cfg, make_mesh(1, 1, 1, jax.devices()[:1]))
    t0 = time.perf_counter()
    lowered = program.step_fn.lower(*program.abstract_args(batch, seq_len))
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, blocks_compiled(run_cfg.model)


def blocks_compiled(model_cfg) -> int:
    """Distinct scanned blocks of the model in memory (layer buckets included)."""
    return len(model_cfg.scan_groups)


def main() -> None:
    from jaxlm.config import load_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["openelm_3b", "phi3_mini_4k"])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["on", "off", "pad"], choices=["on", "off", "pad"],
                    help="on: identical layers scanned; off: every layer its own block; "
                         "pad: layer buckets (model.scan_pad_budget)")
    args = ap.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), seq {args.seq_len}, batch {args.batch}")
    print("| config | layers | grouping | blocks compiled | lower (s) | compile (s) |\n|---|---|---|---|---|---|")
    for name in args.configs:
        base = load_run_config(name)
        for mode in args.modes:
            budget = (base.model.scan_pad_budget or 0.03) if mode == "pad" else 0.0
            model = dataclasses.replace(base.model, scan_layers=mode != "off", scan_pad_budget=budget)
            cfg = dataclasses.replace(base, model=model)
            lower_s, compile_s, groups = compile_step(cfg, args.seq_len, args.batch)
            print(f"| {name} | {cfg.model.num_layers} | {mode} | {groups} | {lower_s:.1f} | "
                  f"{compile_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
