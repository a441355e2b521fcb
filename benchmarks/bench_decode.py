"""Decode throughput and time to first token: jaxlm's compiled prefill + while_loop decode against
Hugging Face transformers `generate`, on the same weights, side by side in one run.

    python benchmarks/bench_decode.py                  # CPU: 270M-class Llama, batch 1 and 8 -> results/decode.md
    python benchmarks/bench_decode.py --size tiny      # CPU: tiny_uniform -> results/decode_tiny.md
    python benchmarks/bench_decode.py --gpu            # GPU: OpenELM-1.1B / 3B, bf16 and int8 KV cache

CPU: a transformers LlamaForCausalLM is built with the --size's sizes and jaxlm's weights are
copied into it (checked by comparing logits before timing). Both sides decode greedily, float32,
for exactly --new-tokens tokens (no stop token), after one warm-up call (compile time is reported
apart), interleaved for --rounds rounds with jaxlm's bf16, int8 and int4 engines on the same
weights; the results file is written only on a quiet machine (benchmarks/quiet.py).
Time to first token = one prefill + one sampled token. Decode tokens/s counts the tokens
after the first: batch * (N - 1) / (time(N tokens) - time to first token).
GPU mode needs a GPU and says so otherwise; its weights are random (throughput does not depend on
their values) and nothing is compared with transformers there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import quiet  # noqa: E402  (benchmarks/quiet.py)

from jaxlm import host_malloc  # noqa: E402


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


SIZES = {  # --size: the model compared with transformers (Llama layout, float32, random weights)
    "tiny": [],  # tiny_uniform as it is
    "270m": ["model.vocab_size=32000", "model.model_dim=1280", "model.num_layers=16", "model.head_dim=64",
             "model.num_query_heads=20", "model.num_kv_heads=5", "model.ffn_dim=3584", "model.max_context=2048"],
}
F32 = ["model.param_dtype=float32", "model.compute_dtype=float32"]
VARIANTS = {  # jaxlm-only rows, each against jaxlm float32 on the same weights
    "bfloat16": ["model.param_dtype=bfloat16", "model.compute_dtype=bfloat16"],
    "int8": ["quant.bits=8"],
    "int4 g128": ["quant.bits=4", "quant.group_size=128"],
}


def jaxlm_decode(engine, ids, n):
    """(decode tok/s after the first token, time to first token s, tokens) of one generate call."""
    out = engine.generate(ids, n)
    return len(ids) * (n - 1) / out.decode_s, out.time_to_first_token_s, out.tokens


def hf_decode(hf, inp, n, gen):
    """(decode tok/s after the first token, time to first token s, new tokens) of transformers."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        hf.generate(inp, max_new_tokens=1, min_new_tokens=1, **gen)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = hf.generate(inp, max_new_tokens=n, min_new_tokens=n, **gen)
        full = time.perf_counter() - t0
    return inp.shape[0] * (n - 1) / max(full - ttft, 1e-9), ttft, out[:, inp.shape[1]:].numpy()


def bench_cpu(args) -> str:
    import jax
    import torch

    from jaxlm.config import load_run_config
    from jaxlm.inference import Engine
    from jaxlm.variants import model_for

    watch = quiet.LoadWatch()
    overrides = SIZES[args.size] + F32
    cfg = load_run_config(args.config, overrides).model
    model = random_jaxlm_model(cfg, seed=0)
    hf = to_transformers(model)
    rng = np.random.default_rng(1)
    check = rng.integers(3, cfg.vocab_size, (2, 24))
    with torch.inference_mode():
        hf_logits = hf(torch.from_numpy(check)).logits.numpy()
    diff = float(np.max(np.abs(np.asarray(model(jax.numpy.asarray(check))) - hf_logits)))
    print(f"logits max |jaxlm - transformers| = {diff:.2e}")
    assert diff < 1e-3, "weight copy is wrong; not timing"

    engines = {"float32": Engine(model)}
    for name, extra in VARIANTS.items():
        rc = load_run_config(args.config, overrides + extra)
        base = random_jaxlm_model(rc.model, seed=0) if name == "bfloat16" else model
        engines[name] = Engine(model_for(rc.model, rc.quant, rc.lora, base=base) if rc.quant.bits else base)
    n, rows = args.new_tokens, []
    gen = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    for batch in (1, 8):
        prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt_len))
        ids = [p.tolist() for p in prompts]
        inp = torch.from_numpy(prompts)
        kw = dict(gen, attention_mask=torch.ones_like(inp))
        compile_s = {}
        for name, e in engines.items():
            t0 = time.perf_counter()
            e.generate(ids, n)  # compile prefill and decode
            compile_s[name] = time.perf_counter() - t0
        with torch.inference_mode():
            threads = quiet.best_torch_threads(lambda: hf.generate(inp, max_new_tokens=8, min_new_tokens=8, **kw), 1)
        sides = {name: (lambda e=e: jaxlm_decode(e, ids, n)) for name, e in engines.items()}
        sides["transformers"] = lambda: hf_decode(hf, inp, n, kw)
        results = {name: [] for name in sides}
        for r in range(args.rounds):
            for name, fn in sides.items():
                results[name].append(fn())
            print(f"  batch {batch} round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f}" for k, v in results.items()),
                  flush=True)
        tps = {k: quiet.median([x[0] for x in v]) for k, v in results.items()}
        ttft = {k: quiet.median([x[1] for x in v]) for k, v in results.items()}
        same = float(np.mean(np.array(results["float32"][0][2]) == results["transformers"][0][2]))
        rows.append(dict(batch=batch, tps=tps, ttft=ttft, same=same, threads=threads, compile=compile_s))
    watch.stop()
    return report_cpu(args, cfg, rows, diff, watch, engines), watch


def report_cpu(args, cfg, rows, diff, watch, engines) -> str:
    import jax
    import torch
    import transformers

    from jaxlm.quant.model import storage_report

    spec = cfg.layer_specs[0]
    lines = [
        f"# Decode: jaxlm vs Hugging Face transformers (CPU, `--size {args.size}`)", "",
        f"Command: `{quiet.command()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Hardware: {quiet.hardware()}; {watch.line()}; jax {jax.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        f"Model: Llama layout, vocab {cfg.vocab_size}, model_dim {cfg.model_dim}, {cfg.num_layers} layers, "
        f"{spec.num_query_heads}/{spec.num_kv_heads} heads, FFN {spec.ffn_dim}, tied embeddings; random weights "
        f"copied into `LlamaForCausalLM` (logits agree to {diff:.1e} max abs before timing).",
        f"Greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, no stop token. Every side runs once "
        f"per round, in turn, for {args.rounds} rounds after a warm-up; the median round is reported. Decode tok/s = "
        f"batch x (new tokens - 1) / (time of the tokens after the first); TTFT = prefill + first token. "
        f"transformers runs `generate` (eager, DynamicCache) at its best thread count (probed: 1 or all cores).", "",
        "| batch | jaxlm f32 tok/s | transformers f32 tok/s | **ratio** | jaxlm TTFT (ms) | transformers TTFT (ms) "
        "| same greedy tokens | torch threads |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        t = r["tps"]
        lines.append(f"| {r['batch']} | {t['float32']:,.1f} | {t['transformers']:,.1f} | "
                     f"**{t['float32'] / t['transformers']:.2f}x** | {r['ttft']['float32'] * 1e3:.0f} | "
                     f"{r['ttft']['transformers'] * 1e3:.0f} | {r['same']:.0%} | {r['threads']} |")
    lines += ["", "jaxlm's other weight formats, same weights (bf16: the same random draw in bfloat16), against "
              "jaxlm float32 in the same rounds:", "",
              "| batch | format | bytes / parameter | tok/s | vs jaxlm f32 | compile (s) |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for name in engines:
            bpp = storage_report(_model_of(engines[name]))["bytes_per_param"]
            lines.append(f"| {r['batch']} | {name} | {bpp:.3f} | {r['tps'][name]:,.1f} | "
                         f"{r['tps'][name] / r['tps']['float32']:.2f}x | {r['compile'][name]:.1f} |")
    return "\n".join(lines + [""])


def _model_of(engine):
    from flax import nnx

    return nnx.merge(engine.graphdef, engine.state)


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
    host_malloc.tune()  # before JAX starts, as the jaxlm CLI does
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_uniform")
    p.add_argument("--size", default="270m", choices=sorted(SIZES), help="model sizes (CPU comparison)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="--gpu: timed runs per setting (the fastest is reported)")
    p.add_argument("--gpu", action="store_true", help="OpenELM-1.1B / 3B on a GPU instead of the CPU comparison")
    p.add_argument("--out", default=None, help="markdown file to write (default: benchmarks/results/decode[_SIZE].md, "
                   "or decode_gpu.md with --gpu)")
    quiet.add_args(p)
    args = p.parse_args()
    if args.gpu:
        text = bench_gpu(args)
        if text:
            out = Path(args.out or Path(__file__).parent / "results" / "decode_gpu.md")
            out.write_text(text)
        return 0
    text, watch = bench_cpu(args)
    name = "decode.md" if args.size == "270m" else f"decode_{args.size}.md"
    return quiet.write_results(Path(args.out or Path(__file__).parent / "results" / name), text, watch, args.force)


if __name__ == "__main__":
    sys.exit(main())
