"""Reading prepared shards (`jaxlm data prepare`) against what training needs, in one run.

Prepares the bundled corpus (8 plays, bundled tokenizer) at seq 2048 into a temporary folder, then
times `PreparedBatches` (memory-mapped rows, a per-epoch permutation, this process's slice of every
global batch) for 1, 2 and 4 processes (each process's reader timed in turn: they share nothing),
interleaved over several rounds. Prints tokens/s per process (positions delivered), the load
average before and after, and the tokens/s that OpenELM-1.1B needs at 50% MFU on one v5p host
(4 chips), from the FLOP formula (jaxlm.model.flops). The results file is written only when the
load average stayed at or below the core count (unless --force).

    python benchmarks/bench_prepared.py [--batches 2000] [--rounds 3] [--force]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
OUT = REPO / "benchmarks" / "results" / "data_prepared.md"
SEQ, BATCH = 2048, 8  # rows of 2048 tokens, 8 rows per process per batch
V5P_PEAK, CHIPS, MFU = 459e12, 4, 0.5


def read_rate(cfg, tok, processes: int, batches: int) -> float:
    """Tokens (positions) per second delivered to one process of `processes`."""
    from jaxlm.data.prepared import PreparedBatches

    it = PreparedBatches(cfg, tok, seq_len=SEQ, batch_size=BATCH, seed=0, process_index=processes - 1,
                         process_count=processes)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    assert batch["inputs"].shape == (BATCH, SEQ)
    return batches * BATCH * SEQ / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--force", action="store_true", help="write the results file even on a loaded machine")
    args = ap.parse_args()

    import dataclasses

    from jaxlm.config import load_run_config
    from jaxlm.data import DataConfig
    from jaxlm.data.prepared import prepare
    from jaxlm.model import flops
    from jaxlm.tokenizer import load_tokenizer

    cores = os.cpu_count()
    load0 = os.getloadavg()
    print(f"host: {platform.machine()}, {cores} cores; load {load0}", flush=True)
    tok = load_tokenizer("bundled:tokenizer")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig()
        t0 = time.perf_counter()
        meta = prepare(cfg, tok, Path(tmp) / "prep", seq_len=SEQ)
        prep_s = time.perf_counter() - t0
        cfg = dataclasses.replace(cfg, prepared=str(Path(tmp) / "prep"))
        rows = sum(s["rows"] for s in meta["sources"])
        rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
        for _ in range(args.rounds):
            for n in rates:
                rates[n].append(read_rate(cfg, tok, n, args.batches))
    load1 = os.getloadavg()
    model = load_run_config("openelm_1_1b").model
    need = MFU * CHIPS * V5P_PEAK / flops.train_flops_per_token(model, SEQ)
    lines = ["# Prepared shards: read rate per process vs what training needs", "",
             f"Command: `python benchmarks/bench_prepared.py --batches {args.batches} --rounds {args.rounds}`. "
             f"Hardware: {platform.machine()}, {cores} cores, no accelerator. Load average before "
             f"{load0[0]:.2f} / after {load1[0]:.2f}.", "",
             f"Prepared: the bundled corpus (8 plays), bundled tokenizer, {rows:,} rows of {SEQ} tokens, in "
             f"{prep_s:.1f} s (read + tokenize + pack, one process). Read: `PreparedBatches`, {BATCH} rows of "
             f"{SEQ} per process per batch, {args.batches} batches per timing, rounds interleaved over the process "
             f"counts; tokens/s = positions delivered to one process (the median of {args.rounds} rounds).", "",
             "| processes in the job | tokens/s per process (median) | all rounds |", "| ---: | ---: | --- |"]
    for n, r in rates.items():
        med = sorted(r)[len(r) // 2]
        lines.append(f"| {n} | {med / 1e6:,.1f}M | {', '.join(f'{x / 1e6:.1f}M' for x in r)} |")
    lines += ["", f"Needed: OpenELM-1.1B at seq {SEQ} costs {flops.train_flops_per_token(model, SEQ):.3g} training "
                  f"FLOPs per token (jaxlm.model.flops); at {MFU:.0%} MFU on one v5p host ({CHIPS} chips x "
                  f"{V5P_PEAK / 1e12:.0f} TFLOP/s bf16) that host consumes **{need:,.0f} tokens/s**, which its one "
                  f"process must read."]
    text = "\n".join(lines) + "\n"
    print(text)
    if max(load0[0], load1[0]) > cores and not args.force:
        print(f"load above {cores} cores: not writing {OUT} (rerun on a quiet machine, or --force)")
        return 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
