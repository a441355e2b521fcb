"""Train-step compile time of a restarted run, with and without the run's compile cache.

    python benchmarks/bench_restart_compile.py [--config default] [--rounds 3] [--set KEY=VALUE ...]

Each round, for each side: `jaxlm train` stopped after 1 of 3 steps (a preemption), then the same
command again, which resumes. The figure is the "step compiled in" time of the resumed process
(tracing, lowering and compiling, or loading the executable from the cache). Sides: `cached`
(train.compile_cache auto: <out_dir>/compile_cache) and `off` (train.compile_cache=off), interleaved.
JAX_COMPILATION_CACHE_DIR is removed from the environment so that only the run's own cache counts.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import quiet

RESULTS = Path(__file__).resolve().parent / "results" / "restart_compile.md"


def run(config: str, out: Path, extra: list[str], stop_after: int | None) -> tuple[float, bool]:
    cmd = [sys.executable, "-m", "jaxlm.cli.main", "train", config, "--set", f"train.out_dir={out}",
           "--set", "train.steps=3", "--set", "train.sample_prompt=", "--set", "checkpoint.every=1"]
    cmd += [a for kv in extra for a in ("--set", kv)]
    if stop_after is not None:
        cmd += ["--set", f"train.stop_after={stop_after}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE") and
           k != "JAX_COMPILATION_CACHE_DIR"}
    p = subprocess.run(cmd, capture_output=True, text=True, env={**env, "JAX_PLATFORMS": "cpu"})
    if p.returncode != 0:
        raise SystemExit(f"jaxlm train failed: {p.stderr.strip().splitlines()[-1:]}")
    m = re.search(r"step compiled in ([\d.]+)s( \(from the compile cache)?", p.stdout)
    return float(m[1]), bool(m[2])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    quiet.add_args(ap)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="restart_compile_"))
    watch = quiet.LoadWatch()

    def side(setting: str):
        def once() -> float:
            out = root / setting
            shutil.rmtree(out, ignore_errors=True)
            extra = args.extra + ([] if setting == "auto" else [f"train.compile_cache={setting}"])
            first, _ = run(args.config, out, extra, stop_after=1)
            again, hit = run(args.config, out, extra, stop_after=None)
            print(f"    {setting}: fresh {first:.1f} s, restarted {again:.1f} s (cache hit: {hit})", flush=True)
            if hit != (setting == "auto"):
                raise SystemExit(f"{setting}: the restarted run {'did not load' if hit is False else 'loaded'} "
                                 f"its step from the cache")
            return again
        return once

    times = quiet.interleaved({"cached": side("auto"), "off": side("off")}, args.rounds)
    watch.stop()
    shutil.rmtree(root, ignore_errors=True)
    cached, off = quiet.median(times["cached"]), quiet.median(times["off"])
    hardware = quiet.hardware().split(";")[0]  # this process runs no JAX; each `jaxlm train` tunes its own malloc
    text = (f"# Train-step compile time after a restart\n\n`{quiet.command()}`\n\n{hardware} (each `jaxlm train` "
            f"process tunes glibc malloc as the CLI does); "
            f"{watch.line()}.\n\nThe resumed `jaxlm train` process's \"step compiled in\" time (trace, lower, "
            f"then compile or load), median of {args.rounds} interleaved rounds:\n\n"
            f"| config | compile cache | restarted step ready in (s) | every round (s) |\n|---|---|---|---|\n"
            f"| {args.config} {' '.join(args.extra)} | off | {off:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in times['off'])} |\n"
            f"| {args.config} {' '.join(args.extra)} | auto (run dir) | {cached:.1f} | "
            f"{', '.join(f'{t:.1f}' for t in times['cached'])} |\n\n"
            f"Ratio: the cached restart is ready in **{cached / off:.2f}x** the time ({off / cached:.1f}x faster).\n")
    return quiet.write_results(RESULTS, text, watch, args.force)


if __name__ == "__main__":
    sys.exit(main())
