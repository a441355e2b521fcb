"""Train-step throughput: jaxlm (jitted step) vs PyTorch (transformers LlamaForCausalLM, AdamW, eager).

    python benchmarks/bench_train_vs_torch.py [--config tiny_uniform] [--batch 16] [--seq-len 128] [--steps 20]

Same architecture (Llama layout: GQA, SwiGLU, RMSNorm, RoPE, tied embeddings), sizes, batch,
sequence length, float32 and AdamW on both sides; random tokens. Each side runs warm-up steps
(JAX: compilation), then the timed steps; the two sides alternate for `--rounds` rounds and
the best round of each is reported, with the ratio jaxlm / torch. CPU threads: what each
framework picks by default on this machine (reported).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np


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


def torch_runner(model_cfg, batch: int, seq: int, lr: float):
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
            out = model(input_ids=x[:, :-1], labels=None)
            loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return time.perf_counter() - t0

    return run, torch.get_num_threads(), sum(p.numel() for p in model.parameters())


def main() -> None:
    from jaxlm.config import load_run_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny_uniform")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    run_cfg = load_run_config(args.config, ["model.attention_impl=xla", "model.norm_impl=xla"])
    if not run_cfg.model.uniform:
        raise SystemExit("the PyTorch side is a Llama: use a config with uniform layers (e.g. tiny_uniform)")
    from jaxlm.model import param_count, abstract_model

    jrun = jax_runner(run_cfg, args.batch, args.seq_len)
    trun, threads, torch_params = torch_runner(run_cfg.model, args.batch, args.seq_len, run_cfg.train.lr)
    t0 = time.perf_counter()
    jrun(2)
    jax_warm = time.perf_counter() - t0
    trun(2)
    best = {"jax": float("inf"), "torch": float("inf")}
    for _ in range(args.rounds):
        best["jax"] = min(best["jax"], jrun(args.steps))
        best["torch"] = min(best["torch"], trun(args.steps))
    tokens = args.batch * args.seq_len * args.steps
    jtps, ttps = tokens / best["jax"], tokens / best["torch"]
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); torch threads {threads}")
    print(f"model {args.config}: jaxlm {param_count(abstract_model(run_cfg.model)):,} params, torch {torch_params:,}; "
          f"batch {args.batch} x seq {args.seq_len}, float32, AdamW; {args.steps} steps x {args.rounds} rounds (best)")
    print(f"jaxlm first 2 steps (incl. compile): {jax_warm:.1f} s")
    print(f"| framework | tokens/s | ms/step |\n|---|---|---|")
    print(f"| jaxlm (jax.jit) | {jtps:,.0f} | {1000 * best['jax'] / args.steps:.1f} |")
    print(f"| PyTorch eager (transformers Llama) | {ttps:,.0f} | {1000 * best['torch'] / args.steps:.1f} |")
    print(f"ratio jaxlm / torch: {jtps / ttps:.2f}x")


if __name__ == "__main__":
    main()
