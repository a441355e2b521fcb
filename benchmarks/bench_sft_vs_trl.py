"""SFT throughput: jaxlm's SFT train step vs TRL's SFTTrainer, on the same tiny Llama-layout model and the
same chat data (the bundled example, `jaxlm data chat-example`), f32, side by side in one run.

    python benchmarks/bench_sft_vs_trl.py [--config tiny_uniform] [--batch 16] [--seq-len 128] [--steps 10]
        [--rounds 3] [--force]

jaxlm: the jitted step of `posttrain.objective: sft` (packed rows, loss on assistant tokens, AdamW). TRL:
SFTTrainer with packing (best-fit decreasing, padding-free) and assistant_only_loss on a transformers
LlamaForCausalLM of the same sizes (gradient checkpointing off: TRL turns it on by default), timed through
`trainer.training_step` + its optimizer step (what
`trainer.train()` runs per step, without logging). Both count the real (non-padding) tokens of their
batches. The sides alternate for --rounds rounds; medians are reported; PyTorch at its best thread count;
the results file is written only on a quiet machine (benchmarks/quiet.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quiet  # noqa: E402

from jaxlm import host_malloc  # noqa: E402
from jaxlm.posttrain import example as make_chat_example  # noqa: E402

TEMPLATE = "bundled:chat/turns.jinja"


def jax_runner(run_cfg, tokenizer, data: str):
    from jaxlm.parallel import make_mesh
    from jaxlm.posttrain.batches import ChatBatches, ChatExamples
    from jaxlm.training.program import build_train_program, initial_params

    tc = run_cfg.train
    program = build_train_program(run_cfg, make_mesh(1, 1, 1, jax.devices()[:1]))
    params, rest = initial_params(run_cfg, program.p_shard, program.r_shard)
    state = {"params": params, "opt_state": jax.jit(program.tx.init)(params)}
    batches = ChatBatches(ChatExamples(run_cfg.posttrain, tokenizer, data, tc.seq_len), tc.batch_size, 0, 0, 1)

    def run(n: int) -> tuple[float, int]:
        nonlocal state
        tokens, elapsed = 0, 0.0
        for _ in range(n):
            batch = next(batches)
            tokens += int((batch["segment_ids"] > 0).sum())
            t0 = time.perf_counter()
            state, metrics = program.step_fn(state, rest, batch)
            jax.block_until_ready(metrics["loss"])
            elapsed += time.perf_counter() - t0
        return elapsed, tokens

    return run


def trl_runner(model_cfg, tokenizer_dir: Path, data: str, batch: int, seq: int, lr: float, work: Path):
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    spec = model_cfg.layer_specs[0]
    cfg = LlamaConfig(vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.model_dim, intermediate_size=spec.ffn_dim,
                      num_hidden_layers=model_cfg.num_layers, num_attention_heads=spec.num_query_heads,
                      num_key_value_heads=spec.num_kv_heads, head_dim=model_cfg.head_dim,
                      rms_norm_eps=model_cfg.norm_eps,
                      rope_theta=model_cfg.rope_theta, max_position_embeddings=model_cfg.max_context,
                      tie_word_embeddings=model_cfg.tie_embeddings, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=batch, max_length=seq, packing=True,
                     assistant_only_loss=True, learning_rate=lr, report_to="none", use_cpu=True, bf16=False,
                     save_strategy="no", dataloader_drop_last=True, gradient_checkpointing=False)  # TRL 1.x turns it on
    trainer = SFTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(tokenizer_dir),
                         train_dataset=load_dataset("json", data_files=data, split="train"))
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.current_gradient_accumulation_steps = 1  # what trainer.train() sets before its steps
    model.train()
    loader = iter(trainer.get_train_dataloader())

    def run(n: int) -> tuple[float, int]:
        nonlocal loader
        tokens, elapsed = 0, 0.0
        for _ in range(n):
            try:
                inputs = next(loader)
            except StopIteration:
                loader = iter(trainer.get_train_dataloader())
                inputs = next(loader)
            tokens += int(inputs["input_ids"].numel() if "position_ids" in inputs else inputs["attention_mask"].sum())
            t0 = time.perf_counter()
            trainer.training_step(model, inputs)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            elapsed += time.perf_counter() - t0
        return elapsed, tokens

    return run, sum(p.numel() for p in model.parameters())


def main() -> int:
    from jaxlm.config import load_run_config
    from jaxlm.posttrain.batches import chat_template, with_chat_template
    from jaxlm.tokenizer import load_tokenizer
    from jaxlm.tokenizer.hf_export import write_hf_tokenizer

    host_malloc.tune()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny_uniform")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "sft_vs_trl.md"))
    quiet.add_args(ap)
    args = ap.parse_args()
    watch = quiet.LoadWatch()
    work = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    make_chat_example.build(work / "chat")
    data = str(work / "chat" / "sft_train.jsonl")
    run_cfg = load_run_config(args.config, [
        "model.attention_impl=xla", "model.norm_impl=xla", "model.compute_dtype=float32", "model.param_dtype=float32",
        "posttrain.objective=sft", f"posttrain.train_data={data}", f"posttrain.chat_template={TEMPLATE}",
        f"train.batch_size={args.batch}", f"train.seq_len={args.seq_len}", "train.z_loss=0"])
    tokenizer = load_tokenizer(run_cfg.data.tokenizer)
    tokenizer = with_chat_template(tokenizer, chat_template(run_cfg.posttrain, tokenizer))
    write_hf_tokenizer(tokenizer, work / "tok", run_cfg.model.max_context)  # the same tokenizer for TRL
    jrun = jax_runner(run_cfg, tokenizer, data)
    trun, torch_params = trl_runner(run_cfg.model, work / "tok", data, args.batch, args.seq_len, run_cfg.train.lr, work)
    threads = quiet.best_torch_threads(lambda: trun(1), repeats=1)
    t0 = time.perf_counter()
    jrun(3)
    jax_warm = time.perf_counter() - t0
    results = {"jaxlm": [], "trl": []}
    rates = quiet.interleaved({"jaxlm": lambda: _rate(jrun, args.steps, results["jaxlm"]),
                               "trl": lambda: _rate(trun, args.steps, results["trl"])}, args.rounds)
    watch.stop()
    med = {k: quiet.median(v) for k, v in rates.items()}
    lines = [
        "# SFT throughput: jaxlm vs TRL SFTTrainer (float32, CPU)", "",
        f"Command: `{quiet.command()}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        f"Hardware: {quiet.hardware()}; jax {jax.__version__}, torch {_version('torch')}, trl {_version('trl')}; "
        f"{watch.line()}.",
        f"Model `{args.config}` (Llama layout; the transformers Llama has {torch_params:,} parameters); the bundled "
        f"chat example's SFT set through the play-script template; batch {args.batch} rows x {args.seq_len} "
        f"tokens, packed, loss on assistant tokens; AdamW. {args.steps} steps per side per round, {args.rounds} "
        f"rounds interleaved; tokens/s counts real (non-padding) tokens. torch threads: {threads}; jaxlm's first 3 "
        f"steps (compilation) took {jax_warm:.1f} s and are not counted.", "",
        "| side | real tokens/s (median) | every round |", "| --- | ---: | --- |",
        *(f"| {k} | {med[k]:,.0f} | {', '.join(f'{r:,.0f}' for r in rates[k])} |" for k in ("jaxlm", "trl")),
        "", f"**jaxlm / TRL: {med['jaxlm'] / med['trl']:.2f}x**; real tokens per step: jaxlm "
            f"{np.mean(results['jaxlm']):,.0f}, TRL {np.mean(results['trl']):,.0f}.", ""]
    return quiet.write_results(Path(args.out), "\n".join(lines), watch, args.force)


def _rate(run, steps: int, tokens_per_step: list) -> float:
    elapsed, tokens = run(steps)
    tokens_per_step.append(tokens / steps)
    return tokens / elapsed


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    raise SystemExit(main())
