"""Peak host memory of prefilling one long prompt on CPU, against its length: it should grow about
linearly in T (blockwise attention and last-token logits), not quadratically.

    python benchmarks/bench_prefill_memory.py [--lengths 2048 4096 8192 16384 32768]

Each length runs in its own process: tiny_uniform (6 layers, d 256, vocab 2048) with max_context
raised to fit, float32, one prompt of T tokens, `Engine.generate(..., max_new_tokens=1)` (prefill +
one decode step, the KV cache included). Peak RSS is the process's ru_maxrss; "over base" subtracts
the same process's RSS after building the model, before the prefill (imports, weights, JAX). The
attention scores alone would be 6 layers x 8 heads x T^2 x 4 bytes if materialised: 32 GiB at 32k.
Results: benchmarks/results/prefill_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "prefill_memory.md"


def child(t: int) -> None:
    import dataclasses

    import numpy as np

    from jaxlm.config import load_run_config
    from jaxlm.inference.engine import Engine
    from jaxlm.model import build_model

    cfg = dataclasses.replace(load_run_config("tiny_uniform").model, max_context=t + 256, attention_impl="auto",
                              compute_dtype="float32")
    engine = Engine(build_model(cfg, seed=0), cache_dtype="float32")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prompt = np.random.default_rng(0).integers(3, cfg.vocab_size, size=t).tolist()
    out = engine.generate([prompt], max_new_tokens=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"T": t, "base_mib": base / 1024, "peak_mib": peak / 1024, "tokens": len(out.tokens[0])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    print(f"host: {platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()}", flush=True)
    rows = []
    for t in args.lengths:
        p = subprocess.run([sys.executable, __file__, "--child", str(t)], capture_output=True, text=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if p.returncode or not line:
            raise SystemExit(f"T={t} failed: {p.stderr[-2000:]}")
        rows.append(json.loads(line[-1]))
        print(rows[-1], flush=True)
    first = rows[0]
    lines = ["# Prefill peak host memory vs prompt length (CPU)", "",
             f"`python benchmarks/bench_prefill_memory.py --lengths {' '.join(map(str, args.lengths))}` on "
             f"{platform.machine()} ({os.cpu_count()} cores). Memory does not depend on the load.", "",
             "| prompt tokens T | peak RSS (MiB) | over base (MiB) | over base / T (KiB per token) | "
             "dense scores would be (MiB) |", "|---|---|---|---|---|"]
    for r in rows:
        over = r["peak_mib"] - r["base_mib"]
        dense = 6 * 8 * r["T"] ** 2 * 4 / 2**20
        lines.append(f"| {r['T']} | {r['peak_mib']:.0f} | {over:.0f} | {over * 1024 / r['T']:.1f} | {dense:.0f} |")
    last = rows[-1]
    grow = (last["peak_mib"] - last["base_mib"]) / max(first["peak_mib"] - first["base_mib"], 1e-9)
    lines += ["", f"From T={first['T']} to T={last['T']} ({last['T'] // first['T']}x longer) the memory over base "
                  f"grew {grow:.1f}x."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
