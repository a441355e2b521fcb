"""`jaxlm plot RUN_DIR`: loss and throughput curves from RUN_DIR/metrics.jsonl, as PNG files."""

from __future__ import annotations

import io
import json
from pathlib import Path

from jaxlm.errors import JaxlmError
from jaxlm.outputs import check_output, output_path


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw loss and throughput curves of a training run as PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `jaxlm train`")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots)")
    p.set_defaults(func=run)


PLOTTED = ("loss", "val_loss", "tokens_per_s", "mfu")  # the record fields drawn: numbers or null


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_metrics(run_dir: Path) -> list[dict]:
    """Records of metrics.jsonl; on a resumed run the latest record of each step wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise JaxlmError(f"{path} not found; give a run directory written by `jaxlm train`")
    by_step = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise JaxlmError(f"{path} line {n} is not JSON; fix or remove that line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or isinstance(rec["step"], bool):
                raise JaxlmError(f"{path} line {n} is not a metrics record (a JSON object with an integer \"step\"); "
                                 f"fix or remove that line")
            bad = next((k for k in PLOTTED if rec.get(k) is not None and not _is_number(rec[k])), None)
            if bad is not None:
                raise JaxlmError(f"{path} line {n}: {bad!r} is {rec[bad]!r}, not a number; fix or remove that line")
            by_step[rec["step"]] = rec
    if not by_step:
        raise JaxlmError(f"{path} holds no records yet; train for at least train.log_every steps")
    return [by_step[s] for s in sorted(by_step)]


# Post-training metrics (TRL's names), drawn when metrics.jsonl has them (jaxlm.training.objectives).
POSTTRAIN_PANELS = [
    ("rewards.png", [("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"), ("rewards/margins", "margin"),
                     ("val_rewards/margins", "validation margin")], "implicit reward (beta x log-ratio)"),
    ("reward_accuracy.png", [("rewards/accuracies", "training"), ("val_rewards/accuracies", "validation")],
     "reward accuracy"),
    ("token_accuracy.png", [("mean_token_accuracy", "assistant tokens")], "token accuracy"),
]


def plot(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    # lazy: keeps `jaxlm --help` fast (matplotlib takes half a second to import)
    import matplotlib

    matplotlib.use("Agg")
    # lazy: after matplotlib.use, as above
    import matplotlib.pyplot as plt


    records = read_metrics(Path(run_dir))
    # Plots are redrawn on every call (overwrite), but never over the metrics they come from.
    out = check_output(out or Path(run_dir) / "plots", overwrite=True, inputs=[Path(run_dir) / "metrics.jsonl"])
    steps = [r["step"] for r in records]
    pngs = {}
    panels = [("loss.png", [("loss", "training loss")], "loss (nats/token)"),
              ("throughput.png", [("tokens_per_s", "tokens/s")], "tokens/s")]
    for name, series, ylabel in POSTTRAIN_PANELS:  # only the post-training runs that logged them
        if any(r.get(series[0][0]) is not None for r in records):
            panels.append((name, series, ylabel))
    for name, series, ylabel in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label in series:
            if key.startswith("val_"):  # logged at validation steps only: points
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                ax.plot(*(zip(*points) if points else ([], [])), marker="o", label=label)
                continue
            ax.plot(steps, [r.get(key) if r.get(key) is not None else float("nan") for r in records], label=label)
        if len(series) > 1:
            ax.legend()
        if name == "loss.png" and any(r.get("val_loss") is not None for r in records):
            val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
            ax.plot(*zip(*val), marker="o", label="validation loss")
            ax.legend()
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if name == "throughput.png" and any(r.get("mfu") is not None for r in records):
            ax2 = ax.twinx()
            ax2.plot(steps, [100 * (r.get("mfu") or float("nan")) for r in records], color="tab:orange")
            ax2.set_ylabel("MFU (%)")
        fig.tight_layout()
        png = io.BytesIO()
        try:
            fig.savefig(png, dpi=100, format="png")
        finally:
            plt.close(fig)
        pngs[name] = png.getvalue()
    for name, data in pngs.items():  # every panel drawn first: a failure leaves no partial output
        with output_path(out / name, overwrite=True, folder=False) as tmp:
            tmp.write_bytes(data)
    return [out / name for name in pngs]


def run(args) -> int:
    for path in plot(args.run_dir, args.out):
        print(path)
    return 0
