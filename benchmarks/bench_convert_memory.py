"""Peak host memory of `jaxlm convert to-hf` (and from-hf) on a ~1B-parameter checkpoint.

Builds OpenELM-1.1B's parameter shapes with jax.eval_shape, fills them with random numbers
(bfloat16 by default, ~2.2 GB), saves them as a jaxlm model dir, then runs each conversion in a
fresh subprocess that reports its own peak RSS (VmHWM).
A subprocess that only imports the same modules gives the baseline. Results go to
benchmarks/results/convert.md; the checkpoint is deleted at the end.

    python benchmarks/bench_convert_memory.py [--config openelm_1_1b] [--dtype bfloat16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMPORTS = "import jax, orbax.checkpoint, safetensors, numpy; import jaxlm.convert, jaxlm.checkpoint"


def make_checkpoint(config: str, dtype: str, out: Path) -> tuple[int, int]:
    """Random weights of the config's shapes, saved as a model dir; returns (params, largest tensor bytes)."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxlm.checkpoint import save_model
    from jaxlm.config import load_run_config
    from jaxlm.model import abstract_model

    run_cfg = load_run_config(config, [f"model.param_dtype={dtype}"])
    model = abstract_model(run_cfg.model)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    pure = jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * 0.02).astype(s.dtype),
                        nnx.state(model, nnx.Param).to_pure_dict())
    state.replace_by_pure_dict(pure)
    save_model(out, run_cfg, nnx.merge(graphdef, state), overwrite=True)
    leaves = jax.tree.leaves(pure)
    return sum(x.size for x in leaves), max(x.nbytes for x in leaves)


def peak_rss_of(code: str) -> tuple[float, float]:
    """(peak RSS in bytes, wall seconds) of a fresh Python process running `code`; the child reports
    its own VmHWM from /proc/self/status (KiB) as its last line. (getrusage's ru_maxrss is not used:
    Linux carries the parent's peak across fork + exec, so a child would report the parent's.)"""
    t = time.perf_counter()
    report = ("\nprint('MAXRSS', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code + report], check=True, cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}).stdout
    wall = time.perf_counter() - t
    return float(out.strip().splitlines()[-1].split()[1]) * 1024.0, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="openelm_1_1b")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--workdir", default="/tmp/jaxlm-bench-convert")
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/convert.md"))
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t = time.perf_counter()
        n_params, largest = make_checkpoint(args.config, args.dtype, work / "model")
        make_s = time.perf_counter() - t
        disk = sum(f.stat().st_size for f in (work / "model").rglob("*") if f.is_file())
        base, _ = peak_rss_of(IMPORTS)
        to_rss, to_s = peak_rss_of(f"{IMPORTS}\njaxlm.convert.to_hf('{work}/model', '{work}/hf')")
        hf_disk = sum(f.stat().st_size for f in (work / "hf").rglob("*") if f.is_file())
        from_rss, from_s = peak_rss_of(f"{IMPORTS}\njaxlm.convert.from_hf('{work}/hf', '{work}/back')")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib = 2.0 ** 30
    target = 2 * largest + 1e9
    lines = [
        "# Checkpoint conversion: peak host memory",
        "",
        f"Measured by `python benchmarks/bench_convert_memory.py --config {args.config} --dtype {args.dtype}` on "
        f"{platform.machine()} Linux, {os.cpu_count()} CPU cores (shared with other jobs), no accelerator "
        f"(JAX_PLATFORMS=cpu), {time.strftime('%Y-%m-%d')}.",
        "",
        f"Checkpoint: {args.config} shapes, random {args.dtype} weights, {n_params / 1e9:.3f}B parameters, "
        f"{disk / gib:.2f} GiB on disk (Orbax); HF output {hf_disk / gib:.2f} GiB. "
        f"Largest tensor: {largest / 2**20:.0f} MiB. Made in {make_s:.0f} s.",
        "",
        "Peak RSS is the whole process (Python + JAX + Orbax + safetensors), read with "
        "/proc/self/status VmHWM at the end of each run, in a fresh subprocess.",
        "",
        "| run | peak RSS | wall |",
        "| --- | --- | --- |",
        f"| import only (baseline) | {base / gib:.2f} GiB | |",
        f"| convert to-hf | {to_rss / gib:.2f} GiB | {to_s:.0f} s |",
        f"| convert from-hf | {from_rss / gib:.2f} GiB | {from_s:.0f} s |",
        "",
        f"Target for to-hf: under 2 x largest tensor + 1 GB = {target / gib:.2f} GiB: "
        f"{'met' if to_rss < target else 'NOT met'} ({to_rss / gib:.2f} GiB; "
        f"{(to_rss - base) / 2**20:.0f} MiB above the import baseline).",
        "",
        "from-hf has no target in the issue and is far from streaming: it reads one tensor at a time "
        "into disk-backed numpy memmaps, but Orbax saves the whole tree in one call; the peak is the "
        "memmaps' resident file pages (reclaimable) plus Orbax's anonymous copies during that save "
        "(about 1.7x the model's bytes in a separate OpenELM-270M check: 0.9 GiB for 0.54 GB).",
    ]
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
