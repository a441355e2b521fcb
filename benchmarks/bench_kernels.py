"""Kernel benchmark: Pallas flash attention and fused RMSNorm against XLA (and cuDNN on GPU).

For OpenELM-1.1B and -3B layer shapes (the layer with the most heads) at seq 2048/4096/8192
(16k tokens per batch), times forward and forward+backward of each implementation side by
side in one process, and writes a Markdown table to benchmarks/results/kernels.md:
  attention: ms, TFLOP/s (causal FLOPs: fwd 2*B*Hq*T*T*D, fwd+bwd 3x that), speed-up over
             XLA and over cuDNN, and the max |difference| from XLA of the output (fwd) or
             of dq, dk, dv (fwd+bwd): a correctness check on the device;
  RMSNorm:   ms, GB/s (bytes the op must move), share of the measured device copy bandwidth.
On a CPU it says so and runs nothing (interpret-mode timings would mean nothing).

    python benchmarks/bench_kernels.py [--seqs 2048,4096,8192] [--iters 20] [--out PATH]
    python benchmarks/bench_kernels.py --cpu-smoke --out /tmp/smoke.md   # checks this script on a CPU

On a lent GPU, run it under a time limit (e.g. `timeout 540 python benchmarks/bench_kernels.py`):
the report is rewritten after the norms and again after attention, so a cut-short run keeps
what it measured.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKENS = 16384  # per batch: B = TOKENS // seq
MODELS = ("openelm_1_1b", "openelm_3b")
INTERPRET = False  # --cpu-smoke: run the script's code paths on a CPU with tiny shapes (timings meaningless)


def timed(fn, args, iters: int) -> float:
    """Median milliseconds of a jitted call (after compile + 2 warm-up calls)."""
    import jax

    out = fn(*args)
    jax.block_until_ready(out)
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def layer_shape(config: str):
    """(Hq, Hkv, head_dim, model_dim) of the config's widest attention layer."""
    from jaxlm.config.run import load_run_config

    cfg = load_run_config(config).model
    spec = max(cfg.layer_specs, key=lambda s: s.num_query_heads)
    return spec.num_query_heads, spec.num_kv_heads, cfg.head_dim, cfg.model_dim


def attention_impls(platform: str):
    import jax

    from kernels_pallas.attention import attention_reference, flash_attention

    impls = {
        "xla": lambda q, k, v: attention_reference(q, k, v, causal=True),
        "pallas": lambda q, k, v: flash_attention(q, k, v, causal=True, platform=platform, interpret=INTERPRET),
    }
    if platform == "gpu" and not INTERPRET:
        impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                      implementation="cudnn")
    return impls


def bench_attention(platform: str, seqs, iters: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    for config in MODELS:
        hq, hkv, d, _ = layer_shape(config)
        for seq in seqs:
            b = max(1, TOKENS // seq)
            ks = jax.random.split(jax.random.key(0), 4)
            q = jax.random.normal(ks[0], (b, seq, hq, d), jnp.bfloat16)
            k = jax.random.normal(ks[1], (b, seq, hkv, d), jnp.bfloat16)
            v = jax.random.normal(ks[2], (b, seq, hkv, d), jnp.bfloat16)
            do = jax.random.normal(ks[3], (b, seq, hq, d), jnp.bfloat16)
            fwd_flops = 2.0 * b * hq * seq * seq * d  # 4 B H T^2 D, halved by the causal mask
            outputs = {}
            for mode in ("fwd", "fwd+bwd"):
                times = {}
                for name, fn in attention_impls(platform).items():
                    if mode == "fwd":
                        f = jax.jit(fn)
                    else:
                        f = jax.jit(lambda q, k, v, do, fn=fn: jax.vjp(fn, q, k, v)[1](do))
                    args = (q, k, v) if mode == "fwd" else (q, k, v, do)
                    try:
                        times[name] = timed(f, args, iters)
                        outputs[mode, name] = f(*args)
                    except Exception as e:  # an OOM of the XLA path at 8k, an unsupported cuDNN shape
                        times[name] = None
                        print(f"  {config} seq {seq} {mode} {name}: failed ({type(e).__name__}: {str(e)[:120]})")
                flops = fwd_flops * (1 if mode == "fwd" else 3)
                for name, ms in times.items():
                    err = None  # fwd: max |out - XLA out|; fwd+bwd: the largest over dq, dk, dv
                    if (mode, name) in outputs and (mode, "xla") in outputs:
                        err = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                                  for a, b in zip(jax.tree.leaves(outputs[mode, name]),
                                                  jax.tree.leaves(outputs[mode, "xla"])))
                    rows.append(dict(config=config, shape=f"B{b} T{seq} Hq{hq} Hkv{hkv} D{d}", mode=mode, impl=name,
                                     ms=ms, tflops=None if ms is None else flops / ms / 1e9,
                                     vs_xla=_ratio(times.get("xla"), ms), vs_cudnn=_ratio(times.get("cudnn"), ms),
                                     err=err))
                    print(_fmt_attention(rows[-1]), flush=True)
    return rows


def copy_bandwidth(iters: int) -> float:
    """GB/s of a device read+write of 1 GiB (x + 1, which XLA cannot elide)."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((1 << (16 if INTERPRET else 28),), jnp.float32)
    ms = timed(jax.jit(lambda x: x + 1), (x,), iters)
    return 2 * x.nbytes / ms / 1e6


def bench_rmsnorm(platform: str, iters: int, copy_gbs: float) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from kernels_pallas.rmsnorm import rms_norm, rms_norm_reference, rms_norm_residual, rms_norm_residual_reference

    rows = []
    for config in MODELS:
        _, _, _, width = layer_shape(config)
        ks = jax.random.split(jax.random.key(0), 4)
        x, r, dy = (jax.random.normal(kk, (TOKENS, width), jnp.bfloat16) for kk in ks[:3])
        w = jnp.ones((width,), jnp.float32)
        unit = x.nbytes
        cases = {  # name -> (fn(x, r, w) -> outputs, bytes fwd, bytes fwd+bwd)
            "norm": ({"xla": lambda x, r, w: rms_norm_reference(x, w),
                      "pallas": lambda x, r, w: rms_norm(x, w, platform=platform, interpret=INTERPRET)},
                     2 * unit, 5 * unit),
            "residual+norm": ({"xla": lambda x, r, w: rms_norm_residual_reference(x, r, w),
                               "pallas": lambda x, r, w: rms_norm_residual(x, r, w, platform=platform,
                                                                           interpret=INTERPRET)},
                              4 * unit, 8 * unit),
        }
        for case, (impls, fwd_bytes, total_bytes) in cases.items():
            for mode in ("fwd", "fwd+bwd"):
                times = {}
                for name, fn in impls.items():
                    if mode == "fwd":
                        f, args = jax.jit(fn), (x, r, w)
                    else:
                        def f(x, r, w, dy, fn=fn):
                            out, pull = jax.vjp(fn, x, r, w)
                            return pull(jax.tree.map(lambda o: dy.astype(o.dtype), out))
                        f, args = jax.jit(f), (x, r, w, dy)
                    times[name] = timed(f, args, iters)
                nbytes = fwd_bytes if mode == "fwd" else total_bytes
                for name, ms in times.items():
                    gbs = nbytes / ms / 1e6
                    rows.append(dict(config=config, shape=f"{TOKENS}x{width} bf16", case=case, mode=mode, impl=name,
                                     ms=ms, gbs=gbs, of_copy=gbs / copy_gbs, vs_xla=_ratio(times["xla"], ms)))
                    print(_fmt_norm(rows[-1]), flush=True)
    return rows


def _ratio(base, ms):
    return None if base is None or ms is None else base / ms


def _n(v, fmt):
    return "-" if v is None else format(v, fmt)


def _fmt_attention(r):
    return (f"| {r['config']} | {r['shape']} | {r['mode']} | {r['impl']} | {_n(r['ms'], '.3f')} | "
            f"{_n(r['tflops'], '.1f')} | {_n(r['vs_xla'], '.2f')} | {_n(r['vs_cudnn'], '.2f')} | "
            f"{_n(r['err'], '.2g')} |")


def _fmt_norm(r):
    return (f"| {r['config']} | {r['shape']} | {r['case']} | {r['mode']} | {r['impl']} | {_n(r['ms'], '.3f')} | "
            f"{_n(r['gbs'], '.0f')} | {_n(r['of_copy'], '.0%')} | {_n(r['vs_xla'], '.2f')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", default="2048,4096,8192")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kernels.md")
    parser.add_argument("--skip-attention", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check this script on a CPU: tiny shapes, kernels in interpret mode, no real numbers")
    args = parser.parse_args(argv)

    import jax

    backend = jax.default_backend()
    if args.cpu_smoke:
        global INTERPRET, TOKENS
        INTERPRET, TOKENS, args.iters = True, 256, 1
        args.seqs = "128"
        backend = "gpu"  # the GPU kernel variant, interpreted; there is no cuDNN on a CPU
    elif backend not in ("gpu", "tpu"):
        print(f"backend is {backend!r}: no GPU or TPU here, so there is nothing to measure "
              f"(Pallas kernels only run in interpret mode on a CPU). Nothing was run.")
        return 0
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({backend}), jax {jax.__version__}")
    copy_gbs = copy_bandwidth(args.iters)
    print(f"device copy bandwidth: {copy_gbs:.0f} GB/s")
    seqs = [int(s) for s in args.seqs.split(",")]
    # The norms first (quick), then attention; the report is rewritten after each, so a run cut
    # short by a time limit still leaves what it measured.
    norm = bench_rmsnorm(backend, args.iters, copy_gbs)
    write_report(args.out, device, backend, args.iters, copy_gbs, [], norm, done=args.skip_attention)
    if not args.skip_attention:
        att = bench_attention(backend, seqs, args.iters)
        write_report(args.out, device, backend, args.iters, copy_gbs, att, norm, done=True)
    return 0


def write_report(out: Path, device, backend: str, iters: int, copy_gbs: float, att, norm, done: bool) -> None:
    import jax

    title = "CPU SMOKE RUN of the script (interpret mode, timings meaningless)" if INTERPRET else "Kernel benchmark"
    lines = [f"# {title} ({device.device_kind}, jax {jax.__version__})", "",
             f"Written by `python benchmarks/bench_kernels.py` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             f"{'' if done else ' (PARTIAL: attention not run yet)'}. "
             f"Median of {iters} timed calls after warm-up; bf16 inputs, {TOKENS} tokens per batch.",
             f"Device copy bandwidth (x + 1 on 1 GiB f32, read + write): {copy_gbs:.0f} GB/s.", ""]
    if att:
        lines += ["## Flash attention (causal, GQA)", "",
                  "TFLOP/s counts causal FLOPs (fwd 2·B·Hq·T²·D, fwd+bwd 3x). x XLA / x cuDNN: speed-up of this "
                  "row over that path (>1 = faster). err: max |difference| from XLA (fwd: output; fwd+bwd: "
                  "dq, dk, dv; bf16, so ~1e-2 is rounding).", "",
                  "| model layer | shape | pass | impl | ms | TFLOP/s | x XLA | x cuDNN | err |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + [_fmt_attention(r) for r in att] + [""]
    lines += ["## RMSNorm", "",
              "GB/s counts the bytes the op must move (norm fwd: x in, y out; +residual: x, r in, h, y out; "
              "fwd+bwd adds the backward's reads and writes). % copy: of the device copy bandwidth.", "",
              "| model | shape | op | pass | impl | ms | GB/s | % copy | x XLA |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + [_fmt_norm(r) for r in norm] + [""]
    lines += ["## What auto should pick (fill jaxlm/ops/dispatch.py AUTO from this)", ""] + _suggest(backend, att, norm)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


def _suggest(backend, att, norm) -> list[str]:
    def fastest(rows):
        total = {}
        for r in rows:
            if r["mode"] == "fwd+bwd" and r["ms"] is not None:
                total.setdefault(r["impl"], []).append(r["ms"])
        complete = {k: sum(v) for k, v in total.items() if len(v) == max(map(len, total.values()))}
        return min(complete, key=complete.get) if complete else "xla"

    return [f"- {backend} attention: `{fastest(att) if att else 'xla'}` (least total fwd+bwd time over the shapes)",
            f"- {backend} rms_norm: `{fastest(norm)}`"]


if __name__ == "__main__":
    raise SystemExit(main())
