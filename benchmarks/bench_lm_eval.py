"""lm-eval loglikelihood throughput of the `jaxlm` model at batch 1 vs batch 8 (is the adapter batched?).

The requests are those of the bundled multiple-choice task (jaxlm/assets/eval/shakespeare_cloze:
32 lines x 4 choices = 128 loglikelihood requests, ~15-25 tokens each), repeated `--repeat` times.
For each model (random weights of a shipped config's shapes, float32, the bundled tokenizer) and
batch size, one untimed pass compiles the programs, then the best of `--runs` timed passes is kept.
With --hf, lm-eval's own `hf` model on the `to-hf` export is timed the same way, for reference.
Results go to benchmarks/results/lm_eval.md.

    python benchmarks/bench_lm_eval.py [--models small default] [--repeat 2] [--runs 3] [--hf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODELS = {  # name: (shipped config, overrides)
    "small": ("tiny_uniform", ["model.num_layers=2", "model.model_dim=64", "model.num_query_heads=4",
                               "model.num_kv_heads=2", "model.head_dim=16", "model.ffn_dim=128"]),
    "default": ("default", []),  # what `jaxlm train` trains: 4.1M parameters, layerwise
}


def requests(repeat: int):
    from lm_eval.api.instance import Instance

    from jaxlm.assets import resolve_path

    docs = [json.loads(line) for line in resolve_path("bundled:eval/shakespeare_cloze.jsonl").read_text().splitlines()]
    pairs = [(d["context"], " " + c) for d in docs for c in d["choices"]] * repeat
    return [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]


def best_time(fn, runs: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_model(name: str, reqs, runs: int, hf: bool, tmp: Path) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    import jaxlm
    from jaxlm.eval import JaxlmLM

    from convert_helpers import save_jaxlm_model

    preset, overrides = MODELS[name]
    run_cfg, _ = save_jaxlm_model(tmp / name, preset, overrides + ["model.attention_impl=xla", "model.norm_impl=xla",
                                                                    "model.param_dtype=float32",
                                                                    "model.compute_dtype=float32"])
    lm = jaxlm.load(tmp / name)
    params = sum(int(x.size) for x in __import__("jax").tree.leaves(__import__("flax").nnx.state(lm.model)))
    rows = []
    for bs in (1, 8):
        adapter = JaxlmLM(lm=lm, batch_size=bs)
        t = best_time(lambda: adapter.loglikelihood(reqs, disable_tqdm=True), runs)
        rows.append({"model": name, "params": params, "impl": "jaxlm", "batch": bs, "s": t, "req/s": len(reqs) / t})
    if hf:
        import torch
        from lm_eval.models.huggingface import HFLM

        from jaxlm.convert import to_hf

        to_hf(tmp / name, tmp / f"{name}_hf")
        torch.set_num_threads(1)  # 2 threads were far slower on this loaded 2-core machine (bench_decode.py)
        for bs in (1, 8):
            model = HFLM(pretrained=str(tmp / f"{name}_hf"), device="cpu", dtype="float32", batch_size=bs,
                         trust_remote_code=True)  # the OpenELM layout brings its model code
            t = best_time(lambda: model.loglikelihood(reqs, disable_tqdm=True), runs)
            rows.append({"model": name, "params": params, "impl": "lm-eval hf (torch, 1 thread)", "batch": bs,
                         "s": t, "req/s": len(reqs) / t})
    return rows


def write_markdown(rows: list[dict], n: int, path: Path, loads: tuple[float, float]) -> None:
    from jaxlm import host_malloc

    lines = ["# lm-eval loglikelihood: batch 1 vs batch 8", "",
             f"`python benchmarks/bench_lm_eval.py` on {platform.machine()} ({os.cpu_count()} CPU cores; 1-minute "
             f"load average {loads[0]:.2f} before, {loads[1]:.2f} after), {time.strftime('%Y-%m-%d')}. {n} "
             f"loglikelihood requests (the bundled shakespeare_cloze task's), best of the timed passes after one "
             f"compiling pass; float32; "
             f"{'glibc malloc tuned as the jaxlm CLI tunes it' if host_malloc.applied() else 'malloc not tuned'}.", "",
             "| model | params | implementation | batch | seconds | requests/s | speed-up vs batch 1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        base = next(x for x in rows if x["model"] == r["model"] and x["impl"] == r["impl"] and x["batch"] == 1)
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['impl']} | {r['batch']} | {r['s']:.3f} | "
                     f"{r['req/s']:.0f} | {base['s'] / r['s']:.2f}x |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    from jaxlm import host_malloc

    host_malloc.tune()  # before JAX starts, as `jaxlm eval` does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeat", type=int, default=2, help="repeat the 128 requests this many times")
    ap.add_argument("--runs", type=int, default=3, help="timed passes per setting (the best is kept)")
    ap.add_argument("--hf", action="store_true", help="also time lm-eval's hf model on the to-hf export")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lm_eval.md"))
    args = ap.parse_args()
    reqs = requests(args.repeat)
    rows = []
    load0 = os.getloadavg()[0]
    print(f"load average {load0:.2f} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, reqs, args.runs, args.hf, Path(tmp))
            for r in rows[-4 if args.hf else -2:]:
                print(f"{r['model']:8s} {r['impl']:30s} batch {r['batch']}: {r['s']:.3f} s ({r['req/s']:.0f} req/s)")
    loads = (load0, os.getloadavg()[0])
    if max(loads) > os.cpu_count():  # figures taken on a busy machine do not reproduce: print, never publish
        print(f"load average {loads} exceeded the {os.cpu_count()} cores: {args.out} not written; rerun on a quiet "
              f"machine")
        sys.exit(1)
    write_markdown(rows, len(reqs), Path(args.out), loads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
