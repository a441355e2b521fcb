"""Peak host memory of `jaxlm convert to-hf` and `from-hf` on ~1B-parameter checkpoints.

Two models, because they stress different paths:
  openelm_1_1b   layerwise: every layer is its own group, so each jaxlm leaf is one layer
  uniform_1b     Llama layout (llama3_8b scaled to 16 layers x 2048): one group, each jaxlm leaf
                 holds all 16 layers stacked in memory (ffn.w_in 1 GiB in bf16, 8x the largest HF
                 tensor); model dirs store it per layer
For each, random weights of the config's shapes (bfloat16 by default) are saved as a jaxlm model dir
and as a training run's checkpoint, then each conversion runs in a fresh subprocess that reports its own peak RSS
(VmHWM); a subprocess that only imports the same modules gives the baseline. The round trip is checked leaf by leaf.
Results go to benchmarks/results/convert.md; the checkpoints are deleted at the end.

    python benchmarks/bench_convert_memory.py [--models openelm_1_1b uniform_1b] [--dtype bfloat16]
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
MODELS = {
    "openelm_1_1b": ("openelm_1_1b", []),
    "uniform_1b": ("llama3_8b", ["model.name=uniform_1b", "model.vocab_size=32000", "model.model_dim=2048",
                                 "model.num_layers=16", "model.num_query_heads=16", "model.num_kv_heads=4",
                                 "model.ffn_dim=8192"]),
}
GIB = 2.0 ** 30


def make_checkpoint(name: str, dtype: str, out: Path) -> dict:
    """Random weights of the model's shapes, saved as a model dir; returns sizes."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxlm.checkpoint import save_model
    from jaxlm.checkpoint.run_checkpoints import RunCheckpoints
    from jaxlm.config import load_run_config
    from jaxlm.convert.family import family_for_model
    from jaxlm.convert.plan import make_plan
    from jaxlm.model import abstract_model

    preset, overrides = MODELS[name]
    run_cfg = load_run_config(preset, overrides + [f"model.param_dtype={dtype}"])
    model = abstract_model(run_cfg.model)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(0)
    pure = jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * 0.02).astype(s.dtype),
                        nnx.state(model, nnx.Param).to_pure_dict())
    state.replace_by_pure_dict(pure)
    save_model(out, run_cfg, nnx.merge(graphdef, state), overwrite=True)
    # The same weights as a training run's checkpoint (stacked layers, one layer per chunk).
    run = out.with_name("run")
    ckpt = RunCheckpoints(run / "checkpoints", every=1, keep=1, keep_best=0, async_save=False)
    ckpt.save(1, pure, {"count": np.zeros((), np.int32)}, {"step": 1}, loss=0.0)
    ckpt.close()
    shutil.copy(out / "config.yaml", run / "config.yaml")
    leaves = jax.tree.leaves(pure)
    itemsize = leaves[0].dtype.itemsize
    plan = make_plan(family_for_model(run_cfg.model), run_cfg.model)
    largest_hf = max(int(np.prod(s)) * itemsize for it in plan for s in it.hf_shapes)
    return {"params": sum(x.size for x in leaves), "largest_leaf": max(x.nbytes for x in leaves),
            "largest_hf": largest_hf, "groups": len(run_cfg.model.scan_groups)}


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


def same_params(a: Path, b: Path) -> bool:
    """Every leaf of two model dirs bit-identical, compared one leaf at a time."""
    from jaxlm.checkpoint.locate import locate
    from jaxlm.checkpoint.params_io import ParamReader

    ra, rb = ParamReader(locate(a)[1]), ParamReader(locate(b)[1])
    return set(ra.shapes) == set(rb.shapes) and all(ra.read(p).tobytes() == rb.read(p).tobytes() for p in ra.shapes)


def measure(name: str, dtype: str, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        t = time.perf_counter()
        row = make_checkpoint(name, dtype, work / "model")
        row["make_s"] = time.perf_counter() - t
        row["disk"] = sum(f.stat().st_size for f in (work / "model").rglob("*") if f.is_file())
        row["to_rss"], row["to_s"] = peak_rss_of(f"{IMPORTS}\njaxlm.convert.to_hf('{work}/model', '{work}/hf')")
        row["run_rss"], row["run_s"] = peak_rss_of(f"{IMPORTS}\njaxlm.convert.to_hf('{work}/run', '{work}/hf_run')")
        row["run_identical"] = all((work / "hf" / f.name).read_bytes() == f.read_bytes()
                                   for f in (work / "hf_run").glob("*.safetensors"))
        row["from_rss"], row["from_s"] = peak_rss_of(f"{IMPORTS}\njaxlm.convert.from_hf('{work}/hf', '{work}/back')")
        row["identical"] = same_params(work / "model", work / "back")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--workdir", default="/tmp/jaxlm-bench-convert")
    ap.add_argument("--results", default=str(REPO / "benchmarks/results/convert.md"))
    args = ap.parse_args()
    base, _ = peak_rss_of(IMPORTS)
    rows = {name: measure(name, args.dtype, Path(args.workdir) / name) for name in args.models}

    def fmt(rss: float, target: float) -> str:
        return f"{rss / GIB:.2f} GiB ({'met' if rss < target else 'NOT met'})"

    lines = [
        "# Checkpoint conversion: peak host memory",
        "",
        f"Measured by `python benchmarks/bench_convert_memory.py --dtype {args.dtype}` on {platform.machine()} "
        f"Linux, {os.cpu_count()} CPU cores (shared with other jobs), no accelerator (JAX_PLATFORMS=cpu), "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "Each model: random weights of its shapes saved as a jaxlm model dir, converted to HF and back, each "
        "conversion in a fresh subprocess; peak RSS is that whole process (Python + JAX + Orbax + safetensors), "
        "/proc/self/status VmHWM at its end. Target (issue 8): under 2 x the largest tensor + 1 GB. "
        f"Import-only baseline: {base / GIB:.2f} GiB.",
        "",
        "| model | params | groups | largest HF tensor | largest jaxlm leaf | target | to-hf peak | from-hf peak "
        "| to-hf peak, from a run checkpoint | wall: to-hf / from-hf / run to-hf | round trip |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        target = 2 * r["largest_hf"] + 1e9
        lines.append(
            f"| {name} | {r['params'] / 1e9:.3f}B | {r['groups']} | {r['largest_hf'] / 2**20:.0f} MiB | "
            f"{r['largest_leaf'] / 2**20:.0f} MiB | {target / GIB:.2f} GiB | {fmt(r['to_rss'], target)} | "
            f"{fmt(r['from_rss'], target)} | {fmt(r['run_rss'], target)} | {r['to_s']:.0f} s / {r['from_s']:.0f} s / "
            f"{r['run_s']:.0f} s | {'bit-identical' if r['identical'] and r['run_identical'] else 'DIFFERENT'} |")
    lines += [
        "",
        "How: a model dir stores each layer's tensors as their own leaves (a group's stacked layers are "
        "split on save and stacked again on load), so to-hf reads one saved tensor at a time and from-hf "
        "converts one HF tensor at a time and hands it to an Orbax partial save (leaves gathered up to "
        "128 MiB per save, no defensive copy). Peak memory follows the largest tensor, not the largest "
        "stacked jaxlm leaf. A training run's checkpoint keeps the stacked leaves, stored one layer per chunk, "
        "and to-hf reads one layer of them at a time. Round trip: the weights after to-hf -> from-hf equal "
        "the original model dir's leaf for leaf, and the HF files from the run checkpoint equal those from the "
        "model dir byte for byte.",
    ]
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
