"""Per-device memory and compile time of the train step on TPU slices, from `jaxlm compile` (libtpu
on this host; no TPU needed), with attention/norm through XLA vs the Pallas (Mosaic) kernels.

    python benchmarks/bench_compile.py [--configs openelm_270m llama3_8b] [--topologies v5e:2x4 v5p:2x2x1]
                                       [--impls xla pallas] [--per-device-batch 2] [--seq-len 2048]

Each compile runs in its own `jaxlm compile` process (one at a time), fsdp over the whole slice.
Memory is what the TPU compiler assigns and does not depend on this host; compile seconds do, so the
load average is recorded around each run and a row's seconds are published in
benchmarks/results/compile.md only when that load stayed at or below the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "compile.md"
ROWS = RESULTS.with_suffix(".jsonl")  # every measured row, so --append can add to an earlier run
TOPOLOGY_CHIPS = {"v5e:2x2": 4, "v5e:2x4": 8, "v5p:2x2x1": 4, "v5p:2x2x2": 8, "h100:1x1x8": 8, "h200:1x1x8": 8}


def compile_once(config: str, topology: str, impl: str, batch: int, seq_len: int, timeout: int,
                 extra: list[str]) -> dict:
    chips = TOPOLOGY_CHIPS[topology]
    cmd = [sys.executable, "-m", "jaxlm.cli.main", "compile", config, "--topology", topology, "--mesh.data", "1",
           "--mesh.fsdp", str(chips), "--batch-size", str(batch), "--seq-len", str(seq_len),
           "--set", f"model.attention_impl={impl}", "--set", f"model.norm_impl={impl}",
           "--set", f"model.max_context={max(seq_len, 2048)}"] + [a for kv in extra for a in ("--set", kv)]
    commit = _commit()  # before the compile: a commit made meanwhile is not what this row measured
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ,
                                                                                  "JAX_PLATFORMS": "cpu"})
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, err, rc = "", f"timed out after {timeout} s", -1
    row = {"config": config, "topology": topology, "impl": impl, "batch": batch, "seq": seq_len, "set": extra,
           "commit": commit, "wall_s": time.perf_counter() - t0, "load": (load0, os.getloadavg()[0]), "rc": rc}
    if m := re.search(r"compiled in ([\d.]+) s", out):
        row["compile_s"] = float(m[1])
    if m := re.search(r"kernel sites: (.+)", out):
        row["sites"] = m[1]
    if m := re.search(r"kernels in the compiled program: (.+)", out):
        row["kernels"] = m[1]
    if m := re.search(r"arguments ([\d.]+) GiB, temporaries ([\d.]+) GiB.*total ([\d.]+) GiB", out):
        row.update(args=float(m[1]), temps=float(m[2]), total=float(m[3]))
    if m := re.search(r"needs ([\d.]+) GiB of ([\d.]+) GiB per device \(HLO temporaries\)", out + err):
        row.update(temps=float(m[1]), hbm=float(m[2]))  # the compiler stopped at the temporaries alone
    elif m := re.search(r"needs ([\d.]+) GiB of ([\d.]+) GiB", out + err):
        row.update(total=float(m[1]), hbm=float(m[2]))
    row["verdict"] = "fits" if rc == 0 else ("does not fit" if "does not fit" in out + err else
                                            (err.strip().splitlines() or ["failed"])[-1][:120])
    return row


def parse_case(case: str) -> tuple[str, str, str, list[str]]:
    """"openelm_3b:v5p:2x2x1:xla+model.scan_pad_budget=0" -> (config, topology, impl, [overrides])."""
    head, *own = case.split("+")
    config, rest = head.split(":", 1)
    topology, impl = rest.rsplit(":", 1)
    return config, topology, impl, own


def _commit() -> str:
    """The checked-out commit (rows measured before and after a change stay apart)."""
    p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent)
    return p.stdout.strip() or "-"


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["openelm_270m", "openelm_1_1b", "openelm_3b", "llama3_8b"])
    ap.add_argument("--topologies", nargs="+", default=["v5e:2x4", "v5p:2x2x1"])
    ap.add_argument("--impls", nargs="+", default=["xla", "pallas"])
    ap.add_argument("--cases", nargs="+", default=None, metavar="CONFIG:TOPOLOGY:IMPL[+KEY=VALUE...]",
                    help="explicit cases, in this order (instead of the configs x topologies x impls grid); "
                         "+KEY=VALUE adds an override to that case alone")
    ap.add_argument("--rounds", type=int, default=1, help="run the cases this many times, interleaved")
    ap.add_argument("--append", action="store_true", help="keep the rows of earlier runs (results/compile.jsonl)")
    ap.add_argument("--per-device-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per compile")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra config override (repeatable)")
    args = ap.parse_args()
    cores = os.cpu_count()
    print(f"host: {platform.processor() or platform.machine()}, {cores} cores; load {os.getloadavg()}", flush=True)
    cases = ([parse_case(c) for c in args.cases] if args.cases else
             [(c, t, i, []) for c in args.configs for t in args.topologies for i in args.impls])
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()] if args.append and ROWS.exists() else []
    for config, topology, impl, own in cases * args.rounds:
        batch = args.per_device_batch * TOPOLOGY_CHIPS[topology]
        rows.append(compile_once(config, topology, impl, batch, args.seq_len, args.timeout, args.extra + own))
        print(rows[-1], flush=True)
        write(rows, args, cores)  # after every row: a long run that is stopped keeps what it measured


def write(rows: list[dict], args, cores: int) -> None:
    """Memory is the TPU compiler's (host-independent) and always written; compile seconds only for
    rows whose load average stayed at or below the core count."""
    lines = ["| config | topology | impl | global batch | seq | overrides | commit | arguments (GiB) | "
             "temporaries (GiB) | total (GiB) | verdict | compile (s) | load before / after |", "|" + "---|" * 13]
    for r in rows:
        quiet = max(r["load"]) <= cores
        seconds = fmt(r.get("compile_s"), 0) if quiet else "not published (loaded)"
        overrides = " ".join(r.get("set", [])) or "-"
        lines.append(f"| {r['config']} | {r['topology']} | {r['impl']} | {r['batch']} | {r.get('seq', 2048)} | "
                     f"{overrides} | {r.get('commit', '-')} | {fmt(r.get('args'))} | "
                     f"{fmt(r.get('temps'))} | {fmt(r.get('total'))} | {r['verdict']} | {seconds} "
                     f"| {r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    header = (f"# Train-step memory and compile time on TPU slices (`jaxlm compile`, libtpu)\n\n"
              f"`python benchmarks/bench_compile.py --cases CONFIG:TOPOLOGY:IMPL ...` (rows in run order; "
              f"benchmarks/results/compile.jsonl has every field): mesh fsdp = all chips, param f32 / compute "
              f"bf16, remat as configured unless overridden; rows without a commit predate the column. "
              f"Compiled on this host ({platform.machine()}, {cores} cores); memory is "
              f"the TPU compiler's per-device assignment and does not depend on the host. Compile seconds are "
              f"published only for rows whose load average stayed at or below {cores}.\n\n")
    RESULTS.parent.mkdir(exist_ok=True)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    notes = old[old.index("\n## "):] if "\n## " in old else ""  # the hand-written sections below the table
    RESULTS.write_text(header + "\n".join(lines) + "\n" + notes)
    ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
