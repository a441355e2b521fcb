"""Train-step throughput: jaxlm (jitted step) vs PyTorch (transformers LlamaForCausalLM, AdamW, eager).

    python benchmarks/bench_train_vs_torch.py [--config tiny_uniform] [--batch 16] [--seq-len 128] [--steps 20]
        [--dtype float32|bfloat16] [--rounds 3] [--torch-compile] [--busy] [--force]
    python benchmarks/bench_train_vs_torch.py --summary      # every recorded run -> results/train_vs_torch_runs.md

Every run, quiet or not, is appended to results/train_vs_torch.jsonl with its date, load average, thread
counts and every round, so a figure is quoted as the median over runs on different days and hours, with
the range, not as the best day (`--summary`). `--torch-compile` adds torch.compile (inductor) on the same
model as a third side; `--busy` runs a second process spinning on one core throughout, to measure each
side's loss under contention.

Same architecture (Llama layout: GQA, SwiGLU, RMSNorm, RoPE, tied embeddings), sizes, batch,
sequence length, float32 and AdamW on both sides; random tokens. Each side runs warm-up steps
(JAX: compilation), then the timed steps; the two sides alternate for `--rounds` rounds and
the median round of each is reported, with the ratio jaxlm / torch. PyTorch runs at the faster
of 1 thread and all cores; the results file is written only on a quiet machine (benchmarks/quiet.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # noqa: E402  (benchmarks/quiet.py)

from jaxlm import host_malloc  # noqa: E402

WARM_STEPS = 6


def jax_runner(run_cfg, batch: int, seq: int):
    from jaxlm.model import build_model
    from jaxlm.parallel import make_mesh, param_shardings
    from jaxlm.training.optimizer import make_optimizer, opt_state_shardings
    from jaxlm.training.state import logical_axes, split_model
    from jaxlm.training.step import jit_train_step, make_train_step

    mesh = make_mesh(1, 1, 1, jax.devices()[:1])
    split, params, rest = split_model(build_model(run_cfg.model, seed=0), run_cfg.lora)
    axes = logical_axes(split.trainable)
    p_shard = param_shardings(axes, params, mesh)
    tx, _ = make_optimizer(run_cfg.train, axes)
    o_shard = opt_state_shardings(tx, params, p_shard, mesh)
    step = jit_train_step(make_train_step(split, tx, micro_batches=1, z_loss=0.0), mesh,
                          {"params": p_shard, "opt_state": o_shard}, {})
    state = {"params": params, "opt_state": tx.init(params)}
    rng = np.random.default_rng(0)

    def batch_fn():
        x = rng.integers(0, run_cfg.model.vocab_size, (batch, seq + 1), dtype=np.int32)
        return {"inputs": x[:, :-1], "targets": x[:, 1:], "segment_ids": np.ones((batch, seq), np.int32),
                "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
                "loss_mask": np.ones((batch, seq), np.float32)}

    def run(n: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(n):
            state, m = step(state, {}, batch_fn())
        jax.block_until_ready(m["loss"])
        return time.perf_counter() - t0

    return run


def torch_runner(model_cfg, batch: int, seq: int, lr: float, dtype: str = "float32", compiled: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = model_cfg.layer_specs[0]
    cfg = LlamaConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.model_dim,
                      intermediate_size=spec.ffn_dim, num_hidden_layers=model_cfg.num_layers,
                      num_attention_heads=spec.num_query_heads, num_key_value_heads=spec.num_kv_heads,
                      head_dim=model_cfg.head_dim, rms_norm_eps=model_cfg.norm_eps, rope_theta=model_cfg.rope_theta,
                      max_position_embeddings=model_cfg.max_context, tie_word_embeddings=model_cfg.tie_embeddings,
                      attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    forward = torch.compile(model) if compiled else model  # inductor: C++ kernels built with the host's g++
    gen = torch.Generator().manual_seed(0)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x = torch.randint(0, model_cfg.vocab_size, (batch, seq + 1), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                out = forward(input_ids=x[:, :-1], labels=None)
            loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, cfg.vocab_size),
                                                     x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return time.perf_counter() - t0

    return run, sum(p.numel() for p in model.parameters())


def main() -> int:
    from jaxlm.config import load_run_config
    from jaxlm.model import abstract_model, param_count

    host_malloc.tune()  # before JAX starts, as the jaxlm CLI does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny_uniform")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="compute dtype of both sides (parameters and AdamW stay float32; torch: CPU autocast)")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/train_vs_torch[_bf16].md)")
    ap.add_argument("--torch-compile", action="store_true", help="also time torch.compile (inductor) on the model")
    ap.add_argument("--busy", action="store_true", help="a second process spins on one core while timing")
    ap.add_argument("--summary", action="store_true", help="summarise every recorded run and exit")
    quiet.add_args(ap)
    args = ap.parse_args()
    if args.summary:
        return summary()
    watch = quiet.LoadWatch()
    run_cfg = load_run_config(args.config, ["model.attention_impl=xla", "model.norm_impl=xla",
                                            f"model.compute_dtype={args.dtype}", "model.param_dtype=float32"])
    if not run_cfg.model.uniform:
        raise SystemExit("the PyTorch side is a Llama: use a config with uniform layers (e.g. tiny_uniform)")

    jrun = jax_runner(run_cfg, args.batch, args.seq_len)
    trun, torch_params = torch_runner(run_cfg.model, args.batch, args.seq_len, run_cfg.train.lr, args.dtype)
    busy = _start_busy() if args.busy else None  # before the probe: torch picks its threads under the same load
    threads = quiet.best_torch_threads(lambda: trun(2), repeats=1)  # torch's warm-up
    sides = {"jaxlm": lambda: jrun(args.steps), "torch": lambda: trun(args.steps)}
    warm = {"jaxlm": _timed(lambda: jrun(2))}
    jrun(WARM_STEPS - 2)  # the heap settles over the first few steps (jaxlm.host_malloc)
    if args.torch_compile:
        crun, _ = torch_runner(run_cfg.model, args.batch, args.seq_len, run_cfg.train.lr, args.dtype, compiled=True)
        warm["torch.compile"] = _timed(lambda: crun(2))  # inductor compiles the forward and backward here
        crun(2)
        sides["torch.compile"] = lambda: crun(args.steps)
    try:
        times = quiet.interleaved(sides, args.rounds)
    finally:
        if busy is not None:
            busy.terminate()
    watch.stop()
    record = _record(args, times, watch, threads, warm)
    _append(RUNS, record)
    text = _report(args, run_cfg, record, torch_params, param_count(abstract_model(run_cfg.model)))
    suffix = ("" if args.dtype == "float32" else "_bf16") + ("_busy" if args.busy else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"train_vs_torch{suffix}.md")
    if args.busy:
        text += (f"The busy process is part of the measurement: it adds 1 to the load (quiet before, at most "
                 f"{quiet.cores() + 1} at the end).\n")
    return quiet.write_results(out, text, watch, args.force, own_load=1 if args.busy else 0)


RUNS = Path(__file__).parent / "results" / "train_vs_torch.jsonl"
# Row names of the results table (experiments/exp_throughput_summary.py reads the first two).
NAMES = {"jaxlm": "jaxlm (jax.jit)", "torch": "PyTorch eager (transformers Llama)",
         "torch.compile": "PyTorch torch.compile (inductor)"}


# The packages whose code makes up the jaxlm side's train step; `step_source` fingerprints them, so the
# summary quotes only runs of the current step code.
STEP_PACKAGES = ("jaxlm/model", "jaxlm/ops", "jaxlm/training", "kernels_pallas")


def step_source() -> str:
    """sha256 (12 hex digits) over the Python sources of STEP_PACKAGES, in path order."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(p for package in STEP_PACKAGES for p in (root / package).rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _spin() -> None:
    while True:
        pass


def _start_busy():
    """A second process spinning on one core for the whole measurement (the other job on a shared host)."""
    proc = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True)
    proc.start()
    return proc


def _record(args, times: dict, watch, torch_threads: int, warm: dict) -> dict:
    tokens = args.batch * args.seq_len * args.steps
    # jaxlm's speed over the other side's, round by round: its time over jaxlm's time
    ratios = {side: [ts / tj for tj, ts in zip(times["jaxlm"], times[side])] for side in times if side != "jaxlm"}
    return {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "dtype": args.dtype, "config": args.config,
            "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps, "rounds": args.rounds,
            "busy": bool(args.busy), "load_before": round(watch.before, 2), "load_after": round(watch.after, 2),
            "cores": quiet.cores(), "quiet": watch.quiet and not args.busy, "torch_threads": torch_threads,
            "step_source": step_source(),
            "xla_threads": quiet.cores(),  # XLA:CPU's intra-op pool: one thread per core it may use
            "warm_s": {k: round(v, 2) for k, v in warm.items()},
            "seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "tokens_per_s": {k: round(tokens / quiet.median(v), 1) for k, v in times.items()},
            "ratio_rounds": {k: [round(r, 4) for r in v] for k, v in ratios.items()}}


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended this run to {path}")


def _spread(xs: list[float]) -> str:
    return f"{quiet.median(xs):.2f}x (min {min(xs):.2f}, max {max(xs):.2f})"


def _report(args, run_cfg, record: dict, torch_params: int, jax_params: int) -> str:
    times, rates = record["seconds"], record["tokens_per_s"]
    lines = [
        f"# Train step: jaxlm vs PyTorch ({args.dtype}{', a busy process beside it' if args.busy else ''})", "",
        f"Command: `{quiet.command()}` ({record['date']} UTC).",
        f"Hardware: {quiet.hardware()}; jax {jax.__version__} ({jax.default_backend()}), torch {_torch_version()}; "
        f"load average {record['load_before']:.2f} before, {record['load_after']:.2f} after (1 min, "
        f"{record['cores']} cores).",
        f"Model `{args.config}`: jaxlm {jax_params:,} parameters, the transformers Llama {torch_params:,}; batch "
        f"{args.batch} x seq {args.seq_len}, compute {args.dtype}, float32 parameters, AdamW, clipping 1.0. "
        f"{args.steps} steps per side per round, {args.rounds} rounds interleaved; the median round is reported. "
        f"Threads: torch {record['torch_threads']} (the faster of 1 and all cores, probed before timing), "
        f"XLA:CPU {record['xla_threads']} (its pool: one per core). Warm-up and compile (s): "
        + ", ".join(f"{k} {v}" for k, v in record["warm_s"].items()) + ".", "",
        "| framework | tokens/s (median) | ms/step | every round (s) |", "| --- | ---: | ---: | --- |"]
    for side, ts in times.items():
        lines.append(f"| {NAMES[side]} | {rates[side]:,.0f} | {1e3 * quiet.median(ts) / args.steps:.0f} "
                     f"| {', '.join(f'{t:.2f}' for t in ts)} |")
    lines.append("")
    for side, rs in record["ratio_rounds"].items():
        lines.append(f"**jaxlm / {side}: {_spread(rs)}** over rounds ({', '.join(f'{r:.2f}x' for r in rs)}).")
    lines.append("")
    return "\n".join(lines)


def summary() -> int:
    """Every recorded run, and per dtype the median and range over the quiet runs: results/train_vs_torch_runs.md."""
    runs = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()] if RUNS.exists() else []
    lines = ["# Train step vs PyTorch: every recorded run", "",
             f"From `{RUNS.name}` (`python benchmarks/bench_train_vs_torch.py --summary`). A run is quiet when the "
             f"load average stayed at or below the core count and no busy process ran beside it.", "",
             "| date (UTC) | step code | dtype | load before / after | quiet | torch threads | "
             "jaxlm / torch eager, rounds | jaxlm / torch.compile |", "|" + " --- |" * 8]
    for r in runs:
        eager = r["ratio_rounds"].get("torch", [])
        comp = r["ratio_rounds"].get("torch.compile")
        code = r.get("step_source", "earlier")
        lines.append(f"| {r['date']} | {code} | {r['dtype']}{' (busy)' if r['busy'] else ''} "
                     f"| {r['load_before']:.2f} / {r['load_after']:.2f} | {'yes' if r['quiet'] else 'no'} | "
                     f"{r['torch_threads']} | {_spread(eager) if eager else '-'} | {_spread(comp) if comp else '-'} |")
    current = runs[-1].get("step_source") if runs else None
    lines += ["", f"Over the quiet runs of the newest step code ({current}); runs of earlier code are listed above "
                  f"and not counted:"]
    for dtype in sorted({r["dtype"] for r in runs}):
        lines += _quiet_median([r for r in runs if r["dtype"] == dtype and r["quiet"]
                                and r.get("step_source") == current], dtype)
    text = "\n".join(lines) + "\n"
    out = RUNS.with_name("train_vs_torch_runs.md")
    out.write_text(text)
    print(text)
    return 0


def _quiet_median(runs: list[dict], dtype: str) -> list[str]:
    """The summary line of one dtype: the median over runs of each run's median round, and its range."""
    lines = []
    for side, name in (("torch", "PyTorch eager"), ("torch.compile", "torch.compile")):
        medians = [quiet.median(r["ratio_rounds"][side]) for r in runs if side in r["ratio_rounds"]]
        hours = {r["date"][:13] for r in runs if side in r["ratio_rounds"]}
        if medians:
            lines.append(f"- {dtype}, jaxlm / {name}: median over {len(medians)} quiet runs in {len(hours)} "
                         f"distinct hours: **{quiet.median(medians):.2f}x** (range {min(medians):.2f}-"
                         f"{max(medians):.2f}x).")
    return lines


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
