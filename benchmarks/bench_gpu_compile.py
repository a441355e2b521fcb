"""Per-GPU memory of the train step on 8-GPU NVIDIA nodes, compiled on this CPU by XLA's GPU compiler
(`jaxlm compile --topology h100:1x1x8`, JAX's CUDA plugin; no GPU needed), and the largest per-GPU
batch that fits.

    python benchmarks/bench_gpu_compile.py                # the memory table, then the batch search
    python benchmarks/bench_gpu_compile.py --skip-search  # the memory table alone

Table: every config x seq x impl (xla: XLA attention and norms; pallas: the Triton kernels; cudnn,
for two configs: jax.nn's cuDNN attention, which packed training batches send to XLA, as the
kernel-sites column shows) at per-GPU batch 1, mesh fsdp 8, on H100 and H200. Search (OpenELM-1.1B
and Llama 3 8B): compile at per-GPU batches 1 and 2, predict the largest batch from the two as if memory
grew linearly, then double or bisect around the prediction until batch B fits and B + 1 does not.
`--resume` reuses the rows already in results/gpu_compile.jsonl.

"Fits" is against the memory JAX's allocator takes by default: 75% of the device
(XLA_PYTHON_CLIENT_MEM_FRACTION), 59.33 GiB of an H100's 79.11 GiB, 105.75 GiB of an H200's 141.0.
Memory is the GPU compiler's assignment and does not depend on this host; compile seconds do and
are published only for rows whose load stayed at or below the core count. Every compile runs in
its own `jaxlm compile` process, one at a time (bench_compile.compile_once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from bench_compile import _commit, compile_once, fmt

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_compile.md"
ROWS = RESULTS.with_suffix(".jsonl")
GPUS_PER_NODE = 8
# OpenELM's context is 2048, so it is compiled at 2048 only; Llama 3 and Phi-3-128k also at 8192.
SEQS = {"openelm_270m": [2048], "openelm_1_1b": [2048], "openelm_3b": [2048], "llama3_8b": [2048, 8192],
        "phi3_mini_128k": [2048, 8192]}
# cuDNN rows only where they show its fallback (packed batches go to XLA attention: the xla row's memory).
CUDNN = ["openelm_1_1b", "llama3_8b"]
# The batch search: (config, impl, overrides). OpenELM-1.1B's remat-full compiles take minutes here, so
# it is searched for the AUTO choice only. Llama 3 8B's config trains without remat, which leaves
# seq 8192 over an H100 at batch 1; with remat=full it is searched too.
SEARCH = [("openelm_1_1b", "pallas", []), ("llama3_8b", "xla", []), ("llama3_8b", "pallas", []),
          ("llama3_8b", "pallas", ["model.remat=full"])]


def node(gpu: str) -> str:
    return f"{gpu}:1x1x{GPUS_PER_NODE}"


_DONE: dict[tuple, dict] = {}  # rows of an earlier run (--resume), by what they measured


def measure(config: str, gpu: str, impl: str, per_gpu_batch: int, seq: int, timeout: int,
            extra: list[str] = ()) -> dict:
    if (key := (config, gpu, impl, per_gpu_batch, seq, " ".join(extra))) in _DONE:
        return dict(_DONE[key])
    row = compile_once(config, node(gpu), impl, per_gpu_batch * GPUS_PER_NODE, seq, timeout, list(extra))
    row.update(gpu=gpu, per_gpu_batch=per_gpu_batch)
    print(json.dumps(row), flush=True)
    return row


def largest_batch(config: str, gpu: str, impl: str, seq: int, extra: list[str], timeout: int,
                  rows: list[dict]) -> dict:
    """Compile until per-GPU batch B fits and B + 1 does not; returns the search's summary row."""
    tried: dict[int, dict] = {}
    summary = {"config": config, "gpu": gpu, "impl": impl, "seq": seq, "set": " ".join(extra) or "-"}

    def fits(b: int) -> bool:
        if b not in tried:
            tried[b] = measure(config, gpu, impl, b, seq, timeout, extra)
            rows.append(tried[b] | {"search": True})
        return tried[b]["verdict"] == "fits"

    if not fits(1):
        return summary | {"largest": 0, "tried": sorted(tried), "total_above": tried[1].get("total")}
    lo, hi = (2, None) if fits(2) else (1, 2)  # lo fits; hi (once known) does not
    one, two = tried[1].get("total"), tried[2].get("total")
    if hi is None and one and two and two > one:
        guess = max(3, int(1 + (_usable_gib(gpu) - one) / (two - one)))
        lo, hi = (guess, None) if fits(guess) else (lo, guess)
    while hi is None:  # the prediction undershot: double until a batch does not fit
        lo, hi = (2 * lo, None) if fits(2 * lo) else (lo, 2 * lo)
    while hi - lo > 1:  # bisect: memory is not linear in the batch once XLA rematerializes
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return summary | {"largest": lo, "tried": sorted(tried), "total_at_largest": tried[lo].get("total"),
                      "total_above": tried[hi].get("total")}


def _usable_gib(gpu: str) -> float:
    from jaxlm.aot.gpu import usable_bytes  # lazy: loads JAX; the compiles run in their own processes

    return usable_bytes(gpu) / 2 ** 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(SEQS))
    ap.add_argument("--gpus", nargs="+", default=["h100", "h200"])
    ap.add_argument("--impls", nargs="+", default=["xla", "pallas"])
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse the rows of results/gpu_compile.jsonl")
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per compile")
    args = ap.parse_args()
    cores = os.cpu_count()
    print(f"host: {platform.processor() or platform.machine()}, {cores} cores; load {os.getloadavg()}", flush=True)
    if args.resume and ROWS.exists():
        for r in map(json.loads, ROWS.read_text().splitlines()):
            _DONE[r["config"], r["gpu"], r["impl"], r["per_gpu_batch"], r["seq"], " ".join(r.get("set", []))] = r
    rows, searches = [], []
    for config in args.configs:
        for seq in SEQS[config]:
            for gpu in args.gpus:
                for impl in args.impls + (["cudnn"] if config in CUDNN and gpu == args.gpus[0] else []):
                    rows.append(measure(config, gpu, impl, 1, seq, args.timeout))
                    write(rows, searches, cores)
    if not args.skip_search:
        for config, impl, extra in [case for case in SEARCH if case[0] in args.configs]:
            for seq in SEQS[config]:
                for gpu in args.gpus:
                    searches.append(largest_batch(config, gpu, impl, seq, extra, args.timeout, rows))
                    print(json.dumps(searches[-1]), flush=True)
                    write(rows, searches, cores)


def write(rows: list[dict], searches: list[dict], cores: int) -> None:
    table = ["| config | GPU | seq | impl | per-GPU batch | arguments (GiB) | temporaries (GiB) | total (GiB) | "
             "verdict (of usable) | kernel sites | compile (s) | load before / after |", "|" + "---|" * 12]
    for r in (r for r in rows if not r.get("search")):
        quiet = max(r["load"]) <= cores
        table.append(f"| {r['config']} | {r['gpu']} | {r['seq']} | {r['impl']} | {r['per_gpu_batch']} | "
                     f"{fmt(r.get('args'))} | {fmt(r.get('temps'))} | {fmt(r.get('total'))} | {r['verdict']} | "
                     f"{r.get('sites', '-')} | {fmt(r.get('compile_s'), 0) if quiet else 'not published (loaded)'} | "
                     f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    found = ["| config | GPU | seq | impl | overrides | largest per-GPU batch | total at it (GiB) | "
             "total at +1 (GiB) | batches compiled |", "|" + "---|" * 9]
    for s in searches:
        found.append(f"| {s['config']} | {s['gpu']} | {s['seq']} | {s['impl']} | {s['set']} | {s['largest']} | "
                     f"{fmt(s.get('total_at_largest'))} | {fmt(s.get('total_above'))} | "
                     f"{', '.join(map(str, s['tried']))} |")
    header = (f"# Train-step memory on 8-GPU NVIDIA nodes, compiled without a GPU (`jaxlm compile`, XLA's GPU "
              f"compiler)\n\n`python benchmarks/bench_gpu_compile.py` at commit {_commit()} (rows: "
              f"benchmarks/results/gpu_compile.jsonl). Mesh fsdp 8, param f32 / compute bf16, remat as each "
              f"config sets it. Compiled on this host ({platform.machine()}, {cores} cores, no GPU). Memory is "
              f"the GPU compiler's per-device assignment; \"fits\" is against JAX's default allocator share, 75% "
              f"of device memory. Compile seconds are published only where the load stayed at or below "
              f"{cores}.\n\n## Per-GPU memory at per-GPU batch 1\n\n")
    RESULTS.parent.mkdir(exist_ok=True)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    notes = old[old.index("\n## Notes"):] if "\n## Notes" in old else ""  # hand-written, kept across runs
    RESULTS.write_text(header + "\n".join(table) + "\n\n## Largest per-GPU batch that fits\n\n" + "\n".join(found)
                       + "\n" + notes)
    ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
