"""Experiment 6: one table of the project's measured speed and memory figures, with where they came from.

    python experiments/exp_throughput_summary.py            # seconds: reads the result files
    python experiments/exp_throughput_summary.py --toy --out /tmp/e6   # same, for tests

It measures nothing itself except the memory of quantized models, computed from shapes with the
project's storage accounting (`jaxlm.quant.storage_report` on `abstract_quantized`, no weights
needed). Every other figure is read from the Markdown result files the benchmarks and experiments
wrote (benchmarks/results/*.md, experiments/results/*.md), with the command and hardware stated
there. A figure whose file is missing, or whose table no longer has the expected row, is listed as
"not found" rather than guessed; GPU figures are marked unmeasured unless a GPU result file exists.
Writes throughput_summary.{md,png,json}.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "throughput_summary"

# (figure, file relative to the repo, regex one table header must match, {column: regex} selecting the
#  row, regexes of the value columns (every header matching one is shown), command when the file names none)
ENTRIES = [
    ("train tokens/s, jaxlm vs PyTorch (tiny_uniform, batch 16 x 128): jaxlm", "benchmarks/results/train_vs_torch.md",
     r"^framework$", {"framework": r"jaxlm"}, (r"^tokens/s", r"^ms/step"), "python benchmarks/bench_train_vs_torch.py"),
    ("train tokens/s, jaxlm vs PyTorch (tiny_uniform, batch 16 x 128): PyTorch eager",
     "benchmarks/results/train_vs_torch.md",
     r"^framework$", {"framework": r"PyTorch"}, (r"^tokens/s", r"^ms/step"),
     "python benchmarks/bench_train_vs_torch.py"),
    ("train-step compile time, OpenELM-3B (36 distinct layers)", "benchmarks/results/train.md", r"^compile",
     {"config": r"openelm_3b", "grouping": r"on"}, (r"^blocks", r"^compile"), "python benchmarks/compile_time.py"),
    ("train-step compile time, Phi-3-mini (32 identical layers, scanned)", "benchmarks/results/train.md",
     r"^compile", {"config": r"phi3_mini", "grouping": r"on"}, (r"^blocks", r"^compile"),
     "python benchmarks/compile_time.py"),
    ("decode tokens/s, jaxlm vs transformers, batch 1", "benchmarks/results/decode.md", r"ratio",
     {"batch": r"^1$"}, (r"jaxlm f32 tok/s", r"transformers f32 tok/s", r"ratio"),
     "python benchmarks/bench_decode.py"),
    ("decode tokens/s, jaxlm vs transformers, batch 8", "benchmarks/results/decode.md", r"ratio",
     {"batch": r"^8$"}, (r"jaxlm f32 tok/s", r"transformers f32 tok/s", r"ratio"),
     "python benchmarks/bench_decode.py"),
    ("data pipeline tokens/s vs training consumption (default config)", "benchmarks/results/data.md",
     r"x training", {"pipeline configuration": r"default"}, (r"^tokens/s", r"x training"),
     "python benchmarks/bench_data.py"),
    ("training tokens/s, tiny_layerwise, live data (data benchmark)", "benchmarks/results/data.md",
     r"training input", {"training input": r"live"}, (r"^tokens/s",), "python benchmarks/bench_data.py"),
    ("peak host memory, convert to-hf (OpenELM-1.1B, layerwise)", "benchmarks/results/convert.md", r"to-hf peak",
     {"model": r"openelm_1_1b"}, (r"^target", r"to-hf peak"), "python benchmarks/bench_convert_memory.py"),
    ("peak host memory, convert from-hf (OpenELM-1.1B, layerwise)", "benchmarks/results/convert.md", r"to-hf peak",
     {"model": r"openelm_1_1b"}, (r"^target", r"from-hf peak"), "python benchmarks/bench_convert_memory.py"),
    ("peak host memory, convert to-hf (uniform 1.1B, stacked layers)", "benchmarks/results/convert.md", r"to-hf peak",
     {"model": r"uniform_1b"}, (r"^target", r"to-hf peak"), "python benchmarks/bench_convert_memory.py"),
    ("peak host memory, convert from-hf (uniform 1.1B, stacked layers)", "benchmarks/results/convert.md", r"to-hf peak",
     {"model": r"uniform_1b"}, (r"^target", r"from-hf peak"), "python benchmarks/bench_convert_memory.py"),
    ("int4 g128 RTN perplexity cost (quant study, tiny model)", "experiments/results/quant_study.md", r"^method$",
     {"weights": r"int4 g128", "method": r"rtn"}, (r"bits / weight", r"vs float32"),
     "python experiments/quant_study.py"),
    ("int4 g128 GPTQ perplexity cost (quant study, tiny model)", "experiments/results/quant_study.md", r"^method$",
     {"weights": r"int4 g128", "method": r"gptq"}, (r"bits / weight", r"vs float32"),
     "python experiments/quant_study.py"),
    ("RMSNorm unfused vs fused, decode (tiny_layerwise, batch 1)", "experiments/results/rmsnorm_fused.md",
     r"decode ratio", {"model": r"tiny_layerwise", "batch": r"^1$", "norm": r"naive"},
     (r"decode tok/s", r"decode ratio"), "python experiments/exp_rmsnorm_fused.py"),
    ("RMSNorm unfused vs fused, decode (openelm_270m, batch 1)", "experiments/results/rmsnorm_fused.md",
     r"decode ratio", {"model": r"openelm_270m", "batch": r"^1$", "norm": r"naive"},
     (r"decode tok/s", r"decode ratio"), "python experiments/exp_rmsnorm_fused.py"),
    ("RMSNorm unfused vs fused, prefill (openelm_270m, batch 1)", "experiments/results/rmsnorm_fused.md",
     r"prefill ratio", {"model": r"openelm_270m", "batch": r"^1$", "norm": r"naive"},
     (r"prefill tok/s", r"prefill ratio"), "python experiments/exp_rmsnorm_fused.py"),
]
GPU_FILES = ["benchmarks/results/kernels.md"]  # kernel ratios: only meaningful on a GPU / TPU
MEMORY_MODELS = ("openelm_270m", "phi3_mini_4k", "llama3_8b")


def tables(text: str) -> list[tuple[int, list[dict]]]:
    """Every Markdown table in text: (character offset where it starts, its {header: cell} rows)."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            start = sum(len(ln) + 1 for ln in lines[:i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(header, cells)))
                i += 1
            out.append((start, rows))
        else:
            i += 1
    return out


def provenance(text: str, default_command: str, before: int | None = None) -> tuple[str, str]:
    """(command, hardware) as the result file states them; the command is the last one written before
    offset `before` (the table the figure came from), else the file's first."""
    cmds = list(re.finditer(r"`((?:python|jaxlm) [^`]+)`", text))
    near = [m for m in cmds if before is not None and m.start() < before]
    cmd = near[-1] if near else (cmds[0] if cmds else None)
    hw = re.search(r"^\s*(?:Hardware|Device|Machine)\s*:\s*(.+)$", text, re.M | re.I)
    if hw is None:
        hw = re.search(r"(\d+ CPU cores[^.;\n]*|NVIDIA[^.;\n]*|TPU[^.;\n]*)", text)
    hardware = re.split(r";|\. ", hw.group(1).strip())[0][:90] if hw else "not stated"
    return (cmd.group(1) if cmd else default_command), hardware


def read_entry(root: Path, entry) -> dict:
    figure, rel, need, select, cols, default_cmd = entry
    path = root / rel
    row = dict(figure=figure, file=rel, command=default_cmd, hardware="-")
    if not path.is_file():
        return dict(row, value="not found (file missing: not run in this checkout)")
    text = path.read_text()
    row["hardware"] = provenance(text, default_cmd)[1]
    for start, table in tables(text):
        if not table or not any(re.search(need, h) for h in table[0]):
            continue
        for r in table:
            if all(re.search(rx, r.get(col, "")) for col, rx in select.items()):
                shown = [h for h in r if any(re.search(c, h) for c in cols)]
                command, hardware = provenance(text, default_cmd, start)
                return dict(row, command=command, hardware=hardware,
                            value=" / ".join(f"{h} {r[h]}" for h in shown))
    return dict(row, value="not found (the file has no matching table row)")


def quantized_memory(models=MEMORY_MODELS) -> list[dict]:
    """Bytes of each model at bf16 and with 8-/4-bit linear layers (embeddings bf16), from shapes."""
    import dataclasses

    from jaxlm.model import abstract_model
    from jaxlm.quant import QuantConfig, abstract_quantized, storage_report

    schemes = [("bf16", None), ("int8 per channel", QuantConfig(bits=8)),
               ("int4 g128 asym", QuantConfig(bits=4, group_size=128, symmetric=False)),
               ("int4 g32 sym", QuantConfig(bits=4, group_size=32))]
    out = []
    for name in models:
        cfg = dataclasses.replace(common.run_config(name).model, param_dtype="bfloat16")
        for label, q in schemes:
            rep = storage_report(abstract_quantized(cfg, q) if q else abstract_model(cfg))
            out.append(dict(model=name, scheme=label, gib=rep["total_bytes"] / 2**30, gb=rep["total_bytes"] / 1e9,
                            bits_per_weight=rep["bits_per_quantized_weight"], params=rep["total_params"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help="the same run (it takes seconds); memory of one model only")
    ap.add_argument("--out", default=str(common.RESULTS), help="folder for the .md/.png/.json results")
    ap.add_argument("--root", default=str(common.REPO), help="repository whose result files are read")
    args = ap.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    log = common.Clock()
    figures = [read_entry(root, e) for e in ENTRIES]
    gpu = []
    for rel in GPU_FILES:
        path = root / rel
        text = path.read_text() if path.is_file() else ""
        measured = bool(re.search(r"NVIDIA|H100|H200|A100|TPU v", text)) and "no GPU" not in text
        gpu.append(dict(file=rel, status="measured: see file" if measured else
                        "UNMEASURED: no GPU was lent to this session" + ("" if path.is_file() else " (file missing)")))
    memory = quantized_memory(MEMORY_MODELS[:1] if args.toy else MEMORY_MODELS)
    result = dict(toy=args.toy, figures=figures, gpu=gpu, memory=memory, hardware=common.hardware(),
                  seconds=log.seconds)
    common.write_results(out, NAME, result, plot, markdown, log)
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Throughput and memory summary{' (TOY run)' if r['toy'] else ''}", "",
             "Command: `python experiments/exp_throughput_summary.py` (collects the files below; rerun each "
             "figure's own command to re-measure it).", "",
             "Every figure below was measured on the hardware its file states (this session: 2 shared CPU cores, "
             "no GPU), as a ratio against a baseline run side by side where the file gives one. Absolute CPU "
             "numbers were taken while other jobs shared the cores.", ""]
    lines += common.md_table(["figure", "value (as written in the file)", "command", "hardware", "file"],
                             [[f["figure"], f["value"], f"`{f['command']}`", f["hardware"], f["file"]]
                              for f in r["figures"]])
    lines += ["", "## GPU / TPU figures", ""]
    lines += [f"- {g['file']}: {g['status']}." for g in r["gpu"]]
    lines += ["- Pallas RMSNorm and flash-attention speed-ups over XLA / cuDNN, and train / decode tokens/s on a "
              "GPU: unmeasured in this session (no GPU lent); `python benchmarks/bench_kernels.py` and "
              "`python experiments/exp_rmsnorm_fused.py` measure them when run on one.", "",
              "## Memory of quantized models (from shapes)", "",
              "`jaxlm.quant.storage_report` of the quantized model structure (`abstract_quantized`, no weights "
              "loaded): bytes actually stored, scales and zero points included; embeddings and untied output "
              "head kept in bf16.", ""]
    lines += common.md_table(["model", "params", "weights", "stored bits / linear weight", "GiB", "GB"],
                             [[m["model"], f"{m['params'] / 1e9:.2f}B", m["scheme"],
                               "-" if m["bits_per_weight"] != m["bits_per_weight"] else f"{m['bits_per_weight']:.3f}",
                               f"{m['gib']:.2f}", f"{m['gb']:.2f}"] for m in r["memory"]])
    phi = [m for m in r["memory"] if m["model"] == "phi3_mini_4k" and m["scheme"].startswith("int4 g128")]
    if phi:
        lines += ["", f"Phi-3's report gives ~1.8 GB for 4-bit phi-3-mini; this layout stores {phi[0]['gb']:.2f} GB "
                      "with 4-bit linear layers and bf16 embeddings + output head (0.39 GB of it); quantizing those "
                      "too (`quant.embed_bits: 8`) or a coarser scale format would come closer."]
    lines += ["", "## What it shows and does not", "",
              "- The CPU ratios are real side-by-side measurements at tiny sizes; they say little about GPU "
              "throughput, where the project's kernels and XLA's GPU fusion decide the outcome.",
              "- Rows marked 'not found' were not produced in this checkout (their benchmark was not run or "
              "its table changed); they are not estimated here.", ""]
    return "\n".join(lines) + "\n"


def plot(path: Path, r: dict) -> None:
    fig, (ax,) = common.figure(width=7.0)
    models = list(dict.fromkeys(m["model"] for m in r["memory"]))
    schemes = list(dict.fromkeys(m["scheme"] for m in r["memory"]))
    by = {(m["model"], m["scheme"]): m["gib"] for m in r["memory"]}
    width = 0.8 / len(schemes)
    for j, s in enumerate(schemes):
        ax.bar([i + j * width for i in range(len(models))], [by[(m, s)] for m in models], width=width, label=s)
    ax.set_xticks([i + width * (len(schemes) - 1) / 2 for i in range(len(models))], models)
    ax.set_yscale("log")
    ax.set_ylabel("stored GiB (from shapes)")
    ax.set_title("model memory by weight format")
    ax.legend(fontsize=8)
    common.save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
