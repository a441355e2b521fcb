"""Decode speed as a phone or laptop user would see it: llama.cpp on a q4_0 GGUF export against jaxlm's
int4 model, the same weights on the same CPU, side by side in one run.

    python benchmarks/bench_gguf_decode.py                 # runs/default if present, else a 20-step tiny run
    python benchmarks/bench_gguf_decode.py --ckpt DIR      # any jaxlm model dir or run dir (llama / phi3 / openelm)

The model is quantized once with `jaxlm quantize --bits 4 --group 32` (symmetric round-to-nearest), and
that int4 model is exported with `jaxlm convert to-gguf`, which writes q4_0 blocks from its stored codes:
llama.cpp and jaxlm hold the same 4-bit weights (embeddings float32 in both, as jaxlm stores them).
llama.cpp runs through llama-cpp-python (`llama_cpp.Llama`, n_threads = the cores, float16 KV cache,
its defaults); jaxlm through `jaxlm.load(...)` (its compiled prefill + while_loop decode, float32 KV
cache). Both decode greedily from one fixed prompt for exactly --new-tokens tokens (no stop token),
after a warm-up call (jaxlm's compile time is reported apart), interleaved for --rounds rounds.
Decode tok/s counts the tokens after the first: (N - 1) / (time of the N tokens - time to the first
token); end to end = N / (prefill + all N tokens). The results file is written only on a quiet machine
(benchmarks/quiet.py). This is information, not a target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # noqa: E402  (benchmarks/quiet.py)

from jaxlm import host_malloc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "ROMEO:"
TINY_RUN = ["--set", "train.steps=20", "--set", "checkpoint.every=20", "--set", "train.sample_prompt="]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def jaxlm_cli(*args: str) -> None:
    """A `jaxlm` command in a subprocess (as a user types it); its output is shown on failure only."""
    cmd = [sys.executable, "-m", "jaxlm.cli.main", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        sys.exit(f"failed: jaxlm {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def source_model(args, tmp: Path) -> tuple[Path, str]:
    """(model dir or run dir, how it was made)."""
    if args.ckpt:
        return Path(args.ckpt), f"`{args.ckpt}`"
    default = REPO / "runs" / "default"
    if (default / "config.yaml").is_file():
        return default, "the trained default run (`runs/default`)"
    print("no runs/default here: training the default model for 20 steps into a temp dir", flush=True)
    jaxlm_cli("train", "--set", f"train.out_dir={tmp / 'run'}", *TINY_RUN)
    return tmp / "run", "the default config trained for 20 steps (`jaxlm train --set train.steps=20`; no runs/default)"


def llama_cpp_side(path: Path, ids: list[int], n: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=max(256, len(ids) + n + 8), n_threads=threads,
                n_threads_batch=threads, verbose=False)

    def run():
        """(decode tok/s after the first token, end-to-end tok/s, time to first token s, tokens)."""
        llm.reset()
        out = []
        t0 = time.perf_counter()
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            out.append(tok)
            if len(out) == 1:
                ttft = time.perf_counter() - t0
            if len(out) == n:
                break
        total = time.perf_counter() - t0
        return (n - 1) / (total - ttft), n / total, ttft, out

    run.close = llm.close  # freed before the interpreter exits (its destructor fails at shutdown)
    return run


def jaxlm_side(lm, ids: list[int], n: int):
    def run():
        t0 = time.perf_counter()
        out = lm.generate_ids([ids], n, temperature=0.0, stop_tokens=[])
        total = time.perf_counter() - t0
        return (n - 1) / out.decode_s, n / total, out.time_to_first_token_s, out.tokens[0]

    return run


def settle(before: float, limit_s: float = 120.0) -> None:
    """Wait (up to limit_s) for the 1-minute load to fall back after this script's own training / export."""
    t0 = time.perf_counter()
    while quiet.load() > max(before, 1.0) + 0.25 and time.perf_counter() - t0 < limit_s:
        time.sleep(5)
    print(f"load average {quiet.load():.2f} after preparing (waited {time.perf_counter() - t0:.0f} s)", flush=True)


def stats(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), quiet.median(xs), max(xs)


def main() -> int:
    host_malloc.tune()  # before JAX starts, as the jaxlm CLI does
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="model dir or run dir (default: runs/default, else a tiny run)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--out", default=None, help="markdown file (default: benchmarks/results/gguf_decode.md)")
    quiet.add_args(p, rounds=5)
    args = p.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (pip install -e '.[llamacpp]' builds llama.cpp from source); "
              "nothing measured")
        return 1

    threads = quiet.cores()
    watch = quiet.LoadWatch()
    print(f"CPU: {cpu_model()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src, made = source_model(args, tmp)
        t0 = time.perf_counter()
        jaxlm_cli("quantize", "--ckpt", str(src), "--out", str(tmp / "int4"), "--bits", "4", "--group", "32")
        quantize_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        jaxlm_cli("convert", "to-gguf", "--ckpt", str(tmp / "int4"), "--out", str(tmp / "model.gguf"),
                  "--type", "q4_0")
        export_s = time.perf_counter() - t0
        gguf_bytes = (tmp / "model.gguf").stat().st_size
        settle(watch.before)

        import jaxlm as jx

        lm = jx.load(tmp / "int4")
        ids = lm.encode_prompts([PROMPT], None)[0]
        jaxlm_run = jaxlm_side(lm, ids, args.new_tokens)
        cpp = f"llama.cpp q4_0, {threads} threads"
        sides = {cpp: llama_cpp_side(tmp / "model.gguf", ids, args.new_tokens, threads)}
        if threads > 1:  # llama.cpp's threads spin at each op's barrier: one busy core slows all of them
            sides["llama.cpp q4_0, 1 thread"] = llama_cpp_side(tmp / "model.gguf", ids, args.new_tokens, 1)
        t0 = time.perf_counter()
        jaxlm_run()  # compiles prefill and decode
        compile_s = time.perf_counter() - t0
        for fn in sides.values():
            fn()  # warm-up
        sides["jaxlm int4"] = jaxlm_run
        results = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, fn in sides.items():
                results[name].append(fn())
            print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1][0]:.1f} tok/s" for k, v in
                                                                  results.items()), flush=True)
        cfg = lm.cfg
        for name, fn in sides.items():
            if name != "jaxlm int4":
                fn.close()
    watch.stop()

    a, b = results[cpp][0][3], results["jaxlm int4"][0][3]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    import jax

    lines = [
        "# Decode on a CPU: llama.cpp (q4_0 GGUF) vs jaxlm int4, the same weights", "",
        f"Command: `{quiet.command()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Hardware: {quiet.hardware()}; CPU model: {cpu_model()}; {watch.line()}.",
        f"Software: llama-cpp-python {llama_cpp.__version__} (llama.cpp built from source on this machine), "
        f"jax {jax.__version__}.",
        f"Model: {made}: {cfg.name}, {cfg.num_layers} layers, model_dim {cfg.model_dim}, vocab {cfg.vocab_size}. "
        f"`jaxlm quantize --bits 4 --group 32` ({quantize_s:.1f} s), then `jaxlm convert to-gguf --type q4_0` from "
        f"the int4 codes ({export_s:.1f} s, {gguf_bytes / 1e6:.2f} MB): both sides hold the same 4-bit weights, "
        f"embeddings float32.",
        f"Decode: greedy, prompt {PROMPT!r} ({len(ids)} tokens), exactly {args.new_tokens} new tokens (no stop "
        f"token), batch 1. llama.cpp: `llama_cpp.Llama(n_threads={threads})` (the cores; also 1 thread), its "
        f"defaults otherwise (float16 KV cache), tokens from `Llama.generate` (its Python loop, as a Python user "
        f"runs it); jaxlm: `jaxlm.load(int4 dir).generate_ids` (float32 KV cache; compile {compile_s:.1f} s, once, "
        f"not counted; the engine `jaxlm.load(...).generate` runs, called with ids to read its timings). One "
        f"warm-up call each, then {args.rounds} interleaved rounds (each side once per round, in turn).",
        "Decode tok/s = (N - 1) / (time of the tokens after the first); end to end = N / (prefill + N tokens); "
        "TTFT = prefill + first token.", "",
        "| side | decode tok/s min | **median** | max | end-to-end tok/s (median) | TTFT ms (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    med = {}
    for name, rows in results.items():
        lo, mid, hi = stats([x[0] for x in rows])
        med[name] = mid
        lines.append(f"| {name} | {lo:,.1f} | **{mid:,.1f}** | {hi:,.1f} | "
                     f"{quiet.median([x[1] for x in rows]):,.1f} | {quiet.median([x[2] for x in rows]) * 1e3:.1f} |")
    ratios = "; ".join(f"{name}: {med[name] / med['jaxlm int4']:.2f}x" for name in med if name != "jaxlm int4")
    lines += ["", f"Median decode tok/s against jaxlm's: {ratios}. The greedy tokens of llama.cpp ({threads} "
              f"threads) and jaxlm agree for the first {same} of {args.new_tokens} (llama.cpp rounds activations "
              f"to 8 bits for its q4_0 matmuls and keeps a float16 KV cache, so its logits are not exactly "
              f"jaxlm's).", ""]
    text = "\n".join(lines)
    out = Path(args.out or Path(__file__).parent / "results" / "gguf_decode.md")
    return quiet.write_results(out, text, watch, args.force)


if __name__ == "__main__":
    sys.exit(main())
