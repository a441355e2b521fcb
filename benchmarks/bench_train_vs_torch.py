"""Train-step throughput: jaxlm (jitted step) vs PyTorch (transformers LlamaForCausalLM, AdamW, eager).

    python benchmarks/bench_train_vs_torch.py [--config tiny_uniform] [--batch 16] [--seq-len 128] [--steps 20]
        [--dtype float32|bfloat16] [--rounds 3] [--force]

Same architecture (Llama layout: GQA, SwiGLU, RMSNorm, RoPE, tied embeddings), sizes, batch,
sequence length, float32 and AdamW on both sides; random tokens. Each side runs warm-up steps
(JAX: compilation), then the timed steps; the two sides alternate for `--rounds` rounds and
the median round of each is reported, with the ratio jaxlm / torch. PyTorch runs at the faster
of 1 thread and all cores; the results file is written only on a quiet machine (benchmarks/quiet.py).
"""

from __future__ import annotations

import argparse
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


def torch_runner(model_cfg, batch: int, seq: int, lr: float, dtype: str = "float32"):
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
    gen = torch.Generator().manual_seed(0)

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x = torch.randint(0, model_cfg.vocab_size, (batch, seq + 1), generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                out = model(input_ids=x[:, :-1], labels=None)
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
    quiet.add_args(ap)
    args = ap.parse_args()
    watch = quiet.LoadWatch()
    run_cfg = load_run_config(args.config, ["model.attention_impl=xla", "model.norm_impl=xla",
                                            f"model.compute_dtype={args.dtype}", "model.param_dtype=float32"])
    if not run_cfg.model.uniform:
        raise SystemExit("the PyTorch side is a Llama: use a config with uniform layers (e.g. tiny_uniform)")

    jrun = jax_runner(run_cfg, args.batch, args.seq_len)
    trun, torch_params = torch_runner(run_cfg.model, args.batch, args.seq_len, run_cfg.train.lr, args.dtype)
    threads = quiet.best_torch_threads(lambda: trun(2), repeats=1)  # torch's warm-up
    t0 = time.perf_counter()
    jrun(2)
    jax_warm = time.perf_counter() - t0
    jrun(WARM_STEPS - 2)  # the heap settles over the first few steps (jaxlm.host_malloc)
    times = quiet.interleaved({"jaxlm": lambda: jrun(args.steps), "torch": lambda: trun(args.steps)}, args.rounds)
    watch.stop()
    tokens = args.batch * args.seq_len * args.steps
    rate = {k: tokens / quiet.median(v) for k, v in times.items()}
    ratios = [tj / tt for tj, tt in zip(times["torch"], times["jaxlm"])]
    lines = [
        f"# Train step: jaxlm vs PyTorch eager ({args.dtype})", "",
        f"Command: `{quiet.command()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Hardware: {quiet.hardware()}; jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{_torch_version()}; {watch.line()}.",
        f"Model `{args.config}`: jaxlm {param_count(abstract_model(run_cfg.model)):,} parameters, the transformers "
        f"Llama {torch_params:,}; batch {args.batch} x seq {args.seq_len}, compute {args.dtype}, float32 "
        f"parameters, AdamW, clipping 1.0. {args.steps} steps per side per round, {args.rounds} rounds "
        f"interleaved; the median round is reported. torch threads: {threads} (the faster of 1 and all cores); "
        f"jaxlm compiled its step in {jax_warm:.1f} s (first 2 steps; {WARM_STEPS} warm-up steps not counted).", "",
        "| framework | tokens/s (median) | ms/step | every round (s) |", "| --- | ---: | ---: | --- |",
        f"| jaxlm (jax.jit) | {rate['jaxlm']:,.0f} | {1e3 * quiet.median(times['jaxlm']) / args.steps:.0f} "
        f"| {', '.join(f'{t:.2f}' for t in times['jaxlm'])} |",
        f"| PyTorch eager (transformers Llama) | {rate['torch']:,.0f} | "
        f"{1e3 * quiet.median(times['torch']) / args.steps:.0f} | {', '.join(f'{t:.2f}' for t in times['torch'])} |",
        "", f"**jaxlm / torch: {rate['jaxlm'] / rate['torch']:.2f}x** (per round: "
            f"{', '.join(f'{r:.2f}x' for r in ratios)}).", ""]
    suffix = "" if args.dtype == "float32" else "_bf16"
    out = Path(args.out or Path(__file__).parent / "results" / f"train_vs_torch{suffix}.md")
    return quiet.write_results(out, "\n".join(lines), watch, args.force)


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
