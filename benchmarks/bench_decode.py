"""Decode throughput and time to first token: jaxlm's compiled prefill + while_loop decode against
Hugging Face transformers `generate`, on the same weights, side by side in one run.

    python benchmarks/bench_decode.py                  # CPU: tiny_uniform, batch 1 and 8 -> results/decode.md
    python benchmarks/bench_decode.py --gpu            # GPU: OpenELM-1.1B / 3B, bf16 and int8 KV cache

CPU: a transformers LlamaForCausalLM is built with tiny_uniform's sizes and jaxlm's weights are
copied into it (checked by comparing logits before timing). Both sides decode greedily, float32,
for exactly --new-tokens tokens (no stop token), after one warm-up call (compile time is reported
apart). Time to first token = one prefill + one sampled token. Decode tokens/s counts the tokens
after the first: batch * (N - 1) / (time(N tokens) - time to first token).
GPU mode needs a GPU and says so otherwise; its weights are random (throughput does not depend on
their values) and nothing is compared with transformers there.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_jaxlm_model(cfg, seed=0):
    """Weights ~ N(0, model_dim^-1/2), norms 1 (built from numpy: no per-weight RNG compiles)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxlm.model import abstract_model

    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(cfg))

    def fill(path, x):
        if "norm" in "/".join(map(str, path)):
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape) * cfg.model_dim ** -0.5, x.dtype)

    state.replace_by_pure_dict(jax.tree_util.tree_map_with_path(fill, state.to_pure_dict()))
    return nnx.merge(graphdef, state)


def to_transformers(model):
    """A transformers LlamaForCausalLM holding the same weights as a uniform jaxlm model."""
    import torch
    from flax import nnx
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    assert cfg.uniform and not cfg.qk_norm and cfg.rope_scaling.type == "none"
    spec = cfg.layer_specs[0]
    hf_cfg = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.model_dim, intermediate_size=spec.ffn_dim,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=spec.num_query_heads,
                         num_key_value_heads=spec.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                         max_position_embeddings=cfg.max_context, tie_word_embeddings=cfg.tie_embeddings,
                         hidden_act="silu", attention_bias=False, mlp_bias=False)
    hf = LlamaForCausalLM(hf_cfg).eval()
    p = nnx.state(model, nnx.Param).to_pure_dict()
    def t(a):
        return torch.from_numpy(np.array(a, np.float32))

    d, g = cfg.model_dim, spec.num_query_heads // spec.num_kv_heads
    sd = {"model.embed_tokens.weight": t(p["embed"]), "model.norm.weight": t(p["final_norm"])}
    layer = 0
    for group in p["groups"].values():
        for i in range(group["attn_norm"].shape[0]):
            qkv = np.asarray(group["attn"]["qkv"][i])  # (D, Hkv, G + 2, hd); q head h = kv * G + g
            pre = f"model.layers.{layer}."
            sd[pre + "self_attn.q_proj.weight"] = t(qkv[:, :, :g].reshape(d, -1).T)
            sd[pre + "self_attn.k_proj.weight"] = t(qkv[:, :, g].reshape(d, -1).T)
            sd[pre + "self_attn.v_proj.weight"] = t(qkv[:, :, g + 1].reshape(d, -1).T)
            sd[pre + "self_attn.o_proj.weight"] = t(np.asarray(group["attn"]["out"][i]).reshape(-1, d).T)
            sd[pre + "mlp.gate_proj.weight"] = t(np.asarray(group["ffn"]["w_in"][i])[:, 0].T)
            sd[pre + "mlp.up_proj.weight"] = t(np.asarray(group["ffn"]["w_in"][i])[:, 1].T)
            sd[pre + "mlp.down_proj.weight"] = t(np.asarray(group["ffn"]["w_out"][i]).T)
            sd[pre + "input_layernorm.weight"] = t(group["attn_norm"][i])
            sd[pre + "post_attention_layernorm.weight"] = t(group["ffn_norm"][i])
            layer += 1
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf


def timed(fn, repeats):
    """Fastest of `repeats` calls (the one least disturbed by other jobs) and its result."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def pick_torch_threads(hf, inp, gen) -> int:
    """PyTorch's thread count matters a lot on a shared machine (OpenMP spin-waits): probe 1 and all
    cores on a short generation and keep the faster, so transformers is timed at its best."""
    import torch

    speed = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        hf.generate(inp, max_new_tokens=2, min_new_tokens=2, **gen)
        speed[threads], _ = timed(lambda: hf.generate(inp, max_new_tokens=8, min_new_tokens=8, **gen), 2)
    best = min(speed, key=speed.get)
    print("  transformers probe (s for 8 tokens by torch threads):", {k: round(v, 3) for k, v in speed.items()})
    torch.set_num_threads(best)
    return best


def bench_cpu(args) -> str:
    import jax
    import torch

    from jaxlm.config import load_run_config
    from jaxlm.inference import Engine

    cfg = load_run_config(args.config).model
    model = random_jaxlm_model(cfg, seed=0)
    hf = to_transformers(model)
    rng = np.random.default_rng(1)
    check = rng.integers(3, cfg.vocab_size, (2, 24))
    with torch.inference_mode():
        hf_logits = hf(torch.from_numpy(check)).logits.numpy()
    diff = float(np.max(np.abs(np.asarray(model(jax.numpy.asarray(check))) - hf_logits)))
    print(f"logits max |jaxlm - transformers| = {diff:.2e}")
    assert diff < 1e-3, "weight copy is wrong; not timing"

    engine = Engine(model)
    n, rows = args.new_tokens, []
    for batch in (1, 8):
        prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len))
        ids = [p.tolist() for p in prompts]
        t0 = time.perf_counter()
        engine.generate(ids, n)  # compile prefill and decode
        compile_s = time.perf_counter() - t0
        outs = [engine.generate(ids, n) for _ in range(args.repeats)]
        j_ttft = min(o.time_to_first_token_s for o in outs)
        j_decode = min(o.decode_s for o in outs)
        j_tps = batch * (n - 1) / j_decode

        inp = torch.from_numpy(prompts)
        gen = dict(do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=torch.ones_like(inp))
        with torch.inference_mode():
            threads = pick_torch_threads(hf, inp, gen)
            hf.generate(inp, max_new_tokens=2, min_new_tokens=2, **gen)  # warm-up
            h_ttft, _ = timed(lambda: hf.generate(inp, max_new_tokens=1, min_new_tokens=1, **gen), args.repeats)
            h_full, h_out = timed(lambda: hf.generate(inp, max_new_tokens=n, min_new_tokens=n, **gen), args.repeats)
        h_tps = batch * (n - 1) / (h_full - h_ttft)
        same = np.mean(np.array(outs[0].tokens) == h_out[:, args.prompt_len:].numpy())
        rows.append((batch, j_ttft, j_tps, h_ttft, h_tps, compile_s, same, threads))
        print(f"batch {batch}: jaxlm ttft {j_ttft * 1e3:.1f} ms, {j_tps:.0f} tok/s | transformers ttft "
              f"{h_ttft * 1e3:.1f} ms, {h_tps:.0f} tok/s ({threads} threads) | speedup {j_tps / h_tps:.1f}x | "
              f"same greedy tokens {same:.0%}")
    return report_cpu(args, cfg, rows, diff)


def report_cpu(args, cfg, rows, diff) -> str:
    import jax
    import torch
    import transformers

    lines = [
        "# Decode benchmark: jaxlm vs Hugging Face transformers (CPU)",
        "",
        f"Command: `python benchmarks/bench_decode.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Hardware: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared with other "
        f"jobs while measuring; jax {jax.__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}.",
        f"Model: `{args.config}` ({cfg.num_layers} layers, model_dim {cfg.model_dim}, vocab {cfg.vocab_size}), random "
        f"weights copied into `LlamaForCausalLM`; logits agree to {diff:.1e} (max abs) before timing.",
        f"Greedy, float32, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, no stop token; fastest of "
        f"{args.repeats} runs after a warm-up. jaxlm KV cache float32 (the model's compute dtype).",
        "",
        "| batch | jaxlm TTFT (ms) | jaxlm decode tok/s | transformers TTFT (ms) | transformers decode tok/s "
        "| decode speedup | jaxlm compile (s) | same greedy tokens | torch threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b, jt, jtps, ht, htps, comp, same, threads in rows:
        lines.append(f"| {b} | {jt * 1e3:.1f} | {jtps:,.0f} | {ht * 1e3:.1f} | {htps:,.0f} | {jtps / htps:.1f}x "
                     f"| {comp:.1f} | {same:.0%} | {threads} |")
    lines += ["", "Decode tok/s = batch x (new tokens - 1) / decode time; TTFT = prefill + first token. "
              "transformers runs `generate` (eager PyTorch, DynamicCache); a short probe picks the faster of 1 torch "
              "thread and all cores (last column) so it is timed at its best.", ""]
    return "\n".join(lines)


def bench_gpu(args) -> str:
    import jax

    if jax.default_backend() != "gpu":
        msg = f"--gpu: no GPU here (jax backend: {jax.default_backend()}); nothing measured."
        print(msg)
        return ""
    import dataclasses

    from jaxlm.config import load_run_config
    from jaxlm.inference import Engine
    from jaxlm.model import kv_cache

    dev = jax.devices()[0]
    lines = ["# Decode on GPU: OpenELM sizes, random bf16 weights", "",
             f"Device: {dev.device_kind}; jax {jax.__version__}. Prompt {args.prompt_len}, {args.new_tokens} new "
             f"tokens, greedy; decode tok/s = batch x (N - 1) / decode time.", "",
             "| model | batch | cache | TTFT (ms) | decode tok/s | cache (MiB) | peak memory (GiB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("openelm_1_1b", "openelm_3b"):
        cfg = dataclasses.replace(load_run_config(name).model, param_dtype="bfloat16", compute_dtype="bfloat16")
        model = random_jaxlm_model(cfg)
        rng = np.random.default_rng(0)
        for batch in (1, 8):
            ids = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len)).tolist()
            for cache in ("bfloat16", "int8"):
                engine = Engine(model, cache_dtype=cache)
                engine.generate(ids, args.new_tokens)
                outs = [engine.generate(ids, args.new_tokens) for _ in range(args.repeats)]
                ttft = min(o.time_to_first_token_s for o in outs)
                tps = batch * (args.new_tokens - 1) / min(o.decode_s for o in outs)
                cache_len = min(cfg.max_context, -(-args.prompt_len // 32) * 32 + -(-args.new_tokens // 32) * 32)
                cmib = kv_cache.cache_bytes(cfg, batch, cache_len, cache) / 2**20
                peak = (dev.memory_stats() or {}).get("peak_bytes_in_use", float("nan")) / 2**30
                lines.append(f"| {name} | {batch} | {cache} | {ttft * 1e3:.1f} | {tps:,.0f} | {cmib:.0f} | "
                             f"{peak:.1f} |")
                print(lines[-1], flush=True)
        del model
    return "\n".join(lines + [""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_uniform")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per setting; the fastest is reported")
    p.add_argument("--gpu", action="store_true", help="OpenELM-1.1B / 3B on a GPU instead of the CPU comparison")
    p.add_argument("--out", default=None, help="markdown file to write (default: benchmarks/results/decode.md, "
                   "or decode_gpu.md with --gpu)")
    args = p.parse_args()
    text = bench_gpu(args) if args.gpu else bench_cpu(args)
    if text:
        out = Path(args.out or Path(__file__).parent / "results" / ("decode_gpu.md" if args.gpu else "decode.md"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
