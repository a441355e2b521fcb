"""Low-bit study: perplexity of a tiny model at 16/8/4/3/2 weight bits, RTN vs GPTQ, then LoRA on the 4-bit model.

    python experiments/quant_study.py            # the real study (~20-30 min on 2 shared CPU cores)
    python experiments/quant_study.py --toy --out /tmp/qs   # seconds; what the test runs

Steps: (1) train a 1.25M-parameter tiny_uniform variant on the bundled corpus with `jaxlm.training.train` (the
`jaxlm train` path); (2) perplexity on the held-back plays (bundled:corpus/valid) for float32, bf16-rounded
weights, and every quantization scheme with round-to-nearest and with GPTQ (Hessians from
calibration windows of the *training* text); (3) LoRA fine-tuning of the 4-bit RTN model (adapters
only, base frozen and quantized) and of the float model for the same steps as a control, since
extra training alone can lower perplexity. Writes quant_study.md, quant_study.png, quant_study.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from jaxlm.config import from_dict, load_run_config, to_dict  # noqa: E402
from jaxlm.config.loader import merge  # noqa: E402
from jaxlm.config.run import RunConfig  # noqa: E402
from jaxlm.inference.scoring import Scorer  # noqa: E402
from jaxlm.lora import LoraConfig, apply_lora  # noqa: E402
from jaxlm.quant import QuantConfig, quantize_model, storage_report  # noqa: E402
from jaxlm.quant.calibration import calibration_batches, read_texts  # noqa: E402
from jaxlm.quant.gptq import collect_hessians, gptq_quantize_fn  # noqa: E402

# A 1.25M-parameter tiny_uniform variant: the 2 shared CPU cores here train it in minutes.
REAL = dict(model=dict(name="tiny_uniform_1m", model_dim=128, num_layers=4, head_dim=32, num_query_heads=4,
                       num_kv_heads=2, ffn_dim=384),
            steps=600, batch=16, seq=64, eval_tokens=8_000, lora_steps=100, lora_rank=8,
            calib=(16, 4), group=128, group2=64, sweep=(32, 64, 128), control=True)
TOY = dict(model=dict(model_dim=64, num_layers=2, head_dim=16, num_query_heads=4, num_kv_heads=2, ffn_dim=128),
           steps=4, batch=8, seq=32, eval_tokens=300, lora_steps=2, lora_rank=4, calib=(1, 2), group=32,
           group2=32, sweep=(), control=False)


def train_base(out: Path, p: dict) -> RunConfig:
    from jaxlm.training import train

    data = merge(to_dict(load_run_config("tiny_uniform")), {"model": p["model"]})
    data = merge(data, {"train": {"steps": p["steps"], "batch_size": p["batch"], "seq_len": p["seq"], "lr": 3e-3,
                                  "warmup_steps": max(1, p["steps"] // 10), "log_every": max(1, p["steps"] // 10),
                                  "out_dir": str(out / "base_run"), "sample_prompt": ""},
                        "checkpoint": {"every": 0, "async_save": False}})
    run_cfg = from_dict(RunConfig, data)
    train(run_cfg, quiet=False)
    return run_cfg


def perplexity(model, tokens, seq_len) -> float:
    return Scorer(model).perplexity(tokens, seq_len=seq_len, batch_size=8)[0]


def bf16_weights(model):
    """Round every weight to bfloat16 and back (weight-only 16-bit; compute stays float32)."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(x.dtype), state))
    return model


def lora_finetune(model, lcfg: LoraConfig, batches, steps: int, lr: float = 1e-3):
    """Train only the adapters (nnx.LoRAParam) with AdamW; the base (quantized or not) stays frozen."""
    apply_lora(model, lcfg)
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam, ...)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps), weight_decay=0.0)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(batch["inputs"], positions=batch["positions"],
                                                       segment_ids=batch["segment_ids"])
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
            return jnp.sum(nll * batch["loss_mask"]) / jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for _ in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
        params, opt, loss = step(params, opt, batch)
        losses.append(float(loss))
    nnx.update(model, params)
    return model, losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="a seconds-long run with a 2-layer model (for tests)")
    ap.add_argument("--out", default=str(REPO / "experiments" / "results"), help="where results are written")
    ap.add_argument("--base", default=None, help="reuse this run dir from an earlier study instead of training")
    args = ap.parse_args(argv)
    p = TOY if args.toy else REAL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from jaxlm.checkpoint import load_model
    from jaxlm.data import make_batch_iterator
    from jaxlm.tokenizer import load_tokenizer

    if args.base:
        from jaxlm.checkpoint.model_dir import read_config

        run_cfg = read_config(args.base)
    else:
        run_cfg = train_base(out, p)
    base_dir = args.base or run_cfg.train.out_dir
    tok = load_tokenizer(run_cfg.data.tokenizer)
    heldout = tok.encode(read_texts("bundled:corpus/valid"))[: p["eval_tokens"]]
    seq = p["seq"]
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731
    log(f"trained base model ({p['steps']} steps); scoring {len(heldout)} held-back tokens")

    load = lambda: load_model(base_dir)[1]  # noqa: E731
    rows = []
    float_ppl = perplexity(load(), heldout, seq)
    rows.append(dict(bits=32, label="float32", method="-", ppl=float_ppl, bits_per_weight=32.0))
    rows.append(dict(bits=16, label="bf16 weights", method="-", ppl=perplexity(bf16_weights(load()), heldout, seq),
                     bits_per_weight=16.0))
    log(f"float32 {float_ppl:.3f}, bf16 {rows[-1]['ppl']:.3f}")

    nb, bs = p["calib"]
    calib = calibration_batches(tok, "bundled:corpus/train", nb, bs, seq, seed=1)
    hessians = collect_hessians(load(), calib)
    g, g2 = p["group"], p["group2"]
    schemes = [("int8 per channel, sym", QuantConfig(bits=8, group_size=None)),
               (f"int4 g{g}, asym", QuantConfig(bits=4, group_size=g, symmetric=False)),
               (f"int3 g{g}, asym", QuantConfig(bits=3, group_size=g, symmetric=False)),
               (f"int2 g{g2}, asym", QuantConfig(bits=2, group_size=g2, symmetric=False))]
    models = {}
    for label, q in schemes:
        for method in ("rtn", "gptq"):
            fn = gptq_quantize_fn(hessians, q.damp) if method == "gptq" else None
            m = quantize_model(load(), dataclasses.replace(q, method=method), fn)
            rep = storage_report(m)
            rows.append(dict(bits=q.bits, label=label, method=method, ppl=perplexity(m, heldout, seq),
                             bits_per_weight=rep["bits_per_quantized_weight"], model_bytes=rep["total_bytes"]))
            models[(q.bits, method)] = m
            log(f"{label} {method}: ppl {rows[-1]['ppl']:.3f} ({rep['bits_per_quantized_weight']:.3f} bits/weight)")
    sweep = []
    for gs in p["sweep"]:
        for sym in (True, False):
            m = quantize_model(load(), QuantConfig(bits=4, group_size=gs, symmetric=sym))
            sweep.append(dict(group=gs, symmetric=sym, ppl=perplexity(m, heldout, seq),
                              bits_per_weight=storage_report(m)["bits_per_quantized_weight"]))
    log("4-bit group-size sweep done")

    # LoRA on the 4-bit RTN model, and on the float model as a control (same data, steps, rank).
    lcfg = LoraConfig(enabled=True, rank=p["lora_rank"], alpha=2.0 * p["lora_rank"])
    lora = {}
    runs = [("int4 RTN + LoRA", models[(4, "rtn")], 4)]
    if p["control"]:  # where the gap is larger, and the float model itself as a control
        runs += [("int2 RTN + LoRA", models[(2, "rtn")], 2), ("float32 + LoRA (control)", load(), None)]
    for name, model, bits in runs:
        batches = make_batch_iterator(run_cfg.data, tok, seq_len=seq, batch_size=p["batch"], seed=7)
        model, losses = lora_finetune(model, lcfg, batches, p["lora_steps"])
        entry = dict(ppl=perplexity(model, heldout, seq), first_loss=losses[0], last_loss=losses[-1])
        if bits is not None:
            q = next(r["ppl"] for r in rows if r["bits"] == bits and r["method"] == "rtn")
            entry.update(bits=bits, before=q,
                         recovered=(q - entry["ppl"]) / (q - float_ppl) if q != float_ppl else float("nan"))
        lora[name] = entry
        log(f"{name}: ppl {entry['ppl']:.3f}")
    recovered = lora["int4 RTN + LoRA"]["recovered"]

    result = dict(config=run_cfg.model.name, params=p, base_reused=bool(args.base), rows=rows, sweep=sweep, lora=lora,
                  recovered_fraction=recovered, seconds=time.perf_counter() - t0, heldout_tokens=len(heldout),
                  hardware=f"{jax.devices()[0].platform} x{jax.device_count()}")
    (out / "quant_study.json").write_text(json.dumps(result, indent=2, default=str))
    write_markdown(out / "quant_study.md", result)
    plot(out / "quant_study.png", result)
    log(f"wrote {out / 'quant_study.md'}")
    return 0


def write_markdown(path: Path, r: dict) -> None:
    p = r["params"]
    fl = next(x["ppl"] for x in r["rows"] if x["bits"] == 32)
    lines = [f"# Low-bit weight quantization study ({r['config']})", "",
             f"Model: {r['config']} trained {p['steps']} steps (batch {p['batch']} x {p['seq']} tokens) on the bundled "
             f"corpus with `jaxlm.training.train`. Perplexity on {r['heldout_tokens']:,} tokens of the held-back plays "
             f"(bundled:corpus/valid), windows of {p['seq']}. Hardware: {r['hardware']}; whole study "
             f"{r['seconds'] / 60:.1f} min" + (" (base model reused with --base: not counted)" if r.get("base_reused")
                                              else "") + ".", "",
             "| weights | method | bits / weight (scales incl.) | perplexity | vs float32 |",
             "| --- | --- | --- | --- | --- |"]
    for x in r["rows"]:
        lines.append(f"| {x['label']} | {x['method']} | {x['bits_per_weight']:.3f} | {x['ppl']:.3f} | "
                     f"{100 * (x['ppl'] / fl - 1):+.2f}% |")
    lines += ["", "4-bit round-to-nearest, group size and symmetry:", "",
              "| group | symmetric | bits / weight | perplexity |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['group']} | {s['symmetric']} | {s['bits_per_weight']:.3f} | {s['ppl']:.3f} |" for s in r["sweep"]]
    lines += ["",
              f"LoRA (rank {p['lora_rank']}, {p['lora_steps']} steps, adapters on qkv/out/w_in/w_out, base frozen):",
              "", "| model | perplexity before | after LoRA | gap to float32 closed | train loss first -> last step |",
              "| --- | --- | --- | --- | --- |"]
    for k, v in r["lora"].items():
        before = f"{v['before']:.3f}" if "before" in v else f"{fl:.3f}"
        closed = f"{v['recovered']:.2f}" if "recovered" in v else "-"
        lines.append(f"| {k} | {before} | {v['ppl']:.3f} | {closed} | {v['first_loss']:.3f} -> {v['last_loss']:.3f} |")
    lines += ["",
              "Gap closed = (ppl before - ppl after) / (ppl before - ppl float32): 1 = all of it; negative = worse; "
              "meaningless when the gap is within noise. Compare with the control row: LoRA on the float model "
              "for the same steps."]
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fl = next(x["ppl"] for x in r["rows"] if x["bits"] == 32)
    bf = next(x["ppl"] for x in r["rows"] if x["bits"] == 16)
    for method, style in (("rtn", "o-"), ("gptq", "s-")):
        pts = sorted((x["bits"], x["ppl"]) for x in r["rows"] if x["method"] == method)
        ax.plot([16] + [b for b, _ in pts], [bf] + [v for _, v in pts], style, label=method.upper())
    ax.axhline(fl, color="gray", ls="--", lw=1, label="float32")
    pts = [(v["bits"], v["ppl"]) for v in r["lora"].values() if "bits" in v]
    ax.plot([b for b, _ in pts], [v for _, v in pts], "r*", ms=12, label="RTN + LoRA")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([2, 3, 4, 8, 16], ["2", "3", "4", "8", "16"])
    ax.set_xlabel("weight bits")
    ax.set_ylabel("held-back perplexity")
    ax.set_title(f"{r['config']}: weight-only quantization")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
