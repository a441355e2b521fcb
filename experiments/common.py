"""Shared helpers of the experiments: configs, a training run with validation curves, held-out
scoring, statistics, and the markdown / PNG writers.

Training goes through the project's own loop (`jaxlm.training.train`, the `jaxlm train` path) and
its data pipeline; the validation curve is read back from the run's checkpoints (saved every
`eval_every` steps) and scored with `jaxlm.inference.Scorer` on held-back text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "experiments" / "results"
SHAKESPEARE = REPO.parent / "shared" / "data" / "shakespeare"  # ../shared beside the checkout (CI and here)
HELD_OUT = "bundled:corpus/valid"  # two plays (As You Like It, The Comedy of Errors) no run trains on


def parser(doc: str, toy_help: str, work_help: str | None = "folder for run dirs (default: runs/experiments/NAME)",
           seeds: bool = True) -> argparse.ArgumentParser:
    """The options experiments share: --toy and --out, and for those that train --work and --seeds."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--toy", action="store_true", help=toy_help)
    ap.add_argument("--out", default=str(RESULTS), help="folder for the .md/.png/.json results")
    if work_help:
        ap.add_argument("--work", default=None, help=work_help)
    if seeds:
        ap.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    return ap


def settings(args, toy: dict, real: dict) -> dict:
    """The experiment's parameters: TOY under --toy, else REAL, with --seeds applied."""
    p = dict(toy if args.toy else real)
    if getattr(args, "seeds", None):
        p["seeds"] = tuple(range(args.seeds))
    return p


def work_dir(work: str | None, out: Path, name: str) -> Path:
    """Where an experiment keeps its run dirs: --work, else runs/experiments/NAME (git-ignored) for the
    default results folder, else OUT/.work/NAME (tests)."""
    if work:
        return Path(work)
    if Path(out).resolve() == RESULTS.resolve():
        return REPO / "runs" / "experiments" / name
    return Path(out) / ".work" / name


def run_config(base: str | dict, **sections):
    """RunConfig from a config name (configs/<name>.yaml) or a model dict, plus section dicts merged in
    (e.g. model={"num_layers": 2}, train={...}, seed=1)."""
    from jaxlm.config import RunConfig, from_dict, load_yaml, to_dict
    from jaxlm.config.loader import merge

    data = load_yaml(base) if isinstance(base, str) else {"model": base}
    for key, value in sections.items():
        data = merge(data, {key: value})
    return from_dict(RunConfig, to_dict(from_dict(RunConfig, data)))


def train_settings(steps: int, batch: int, seq: int, out_dir: Path, lr: float = 3e-3, warmup: int | None = None,
                   log_every: int | None = None) -> dict:
    """The `train:` section used by every experiment (OpenELM's AdamW recipe, a short warm-up)."""
    return {"steps": steps, "batch_size": batch, "seq_len": seq, "lr": lr,
            "warmup_steps": warmup if warmup is not None else max(1, steps // 10),
            "log_every": log_every or max(1, min(25, steps // 4)), "out_dir": str(out_dir), "sample_prompt": ""}


def finished_run(run_cfg) -> bool:
    """True when run_cfg.train.out_dir holds a finished run of the same model, data, schedule and seed."""
    from jaxlm.checkpoint.locate import finished_steps
    from jaxlm.checkpoint.model_dir import read_config

    run_dir = Path(run_cfg.train.out_dir)
    if run_cfg.train.steps not in finished_steps(run_dir / "checkpoints") or not (run_dir / "config.yaml").is_file():
        return False
    import dataclasses

    saved = read_config(run_dir)  # its checkpoint section differs (set below) and the folder may have moved
    def same(c):
        train = {k: v for k, v in dataclasses.asdict(c.train).items() if k != "out_dir"}
        return c.model, c.data, train, c.seed

    return same(saved) == same(run_cfg)


def train_with_curve(run_cfg, eval_tokens: list[int], eval_every: int, eval_seq: int, reuse: bool = False) -> dict:
    """Train `run_cfg` on one device, then score every saved checkpoint on `eval_tokens`.

    reuse: keep a finished run of the same config (`finished_run`) instead of training again.
    Returns dict(run_dir, seconds, train_loss {step: loss}, curve [(step, tokens_seen, val_loss)]).
    val_loss is the mean next-token cross-entropy in nats on the held-back tokens.
    """
    import dataclasses

    import jax

    from jaxlm.checkpoint import load_model
    from jaxlm.checkpoint.locate import finished_steps
    from jaxlm.training import train

    run_dir = Path(run_cfg.train.out_dir)
    marker = run_dir / "experiment_train.json"  # wall seconds and logged losses of the training
    t0 = time.perf_counter()
    if reuse and finished_run(run_cfg) and marker.is_file():
        saved = json.loads(marker.read_text())
        seconds, losses = saved["seconds"], {int(k): v for k, v in saved["losses"].items()}
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_cfg = dataclasses.replace(run_cfg, checkpoint=dataclasses.replace(
            run_cfg.checkpoint, every=eval_every, keep=10_000, keep_best=0, async_save=False))
        losses = dict(train(run_cfg, quiet=True, devices=jax.devices()[:1]).losses)
        seconds = time.perf_counter() - t0
        write_json(marker, {"seconds": seconds, "losses": losses})
    t1 = time.perf_counter()
    tokens_per_step = run_cfg.train.batch_size * run_cfg.train.seq_len
    curve = []
    for step in finished_steps(run_dir / "checkpoints"):
        _, model = load_model(run_dir / "checkpoints" / str(step))
        curve.append((step, step * tokens_per_step, heldout_loss(model, eval_tokens, eval_seq)))
    return dict(run_dir=str(run_dir), seconds=seconds, eval_seconds=time.perf_counter() - t1, train_loss=losses,
                curve=curve)


def heldout_loss(model, tokens: list[int], seq_len: int) -> float:
    """Mean next-token cross-entropy (nats) of `model` on a token stream, in windows of seq_len."""
    from flax import nnx

    from jaxlm.inference import Scorer

    key = (model.cfg, jax_tree_signature(model))
    scorer = _SCORERS.get(key)
    if scorer is None:
        scorer = _SCORERS[key] = Scorer(model)
    else:  # same architecture: reuse the compiled scoring program with this model's weights
        scorer.state = nnx.split(model)[1]
    ppl, _ = scorer.perplexity(tokens, seq_len=seq_len, batch_size=8)
    return math.log(ppl)


_SCORERS: dict = {}


def jax_tree_signature(model) -> tuple:
    """Structure + shapes + dtypes of a model's state (two models with equal signatures share programs)."""
    import jax
    from flax import nnx

    state = nnx.state(model)
    return (str(jax.tree.structure(state)),
            tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(state)))


def text_tokens(tokenizer, path: str | Path, limit: int | None = None) -> list[int]:
    """Tokens of every text file under `path` (sorted), each file starting with bos, capped at `limit`."""
    from jaxlm.assets import resolve_path

    root = resolve_path(str(path))
    files = sorted(root.rglob("*.txt")) if root.is_dir() else [root]
    out: list[int] = []
    for f in files:
        out += tokenizer.encode(f.read_text(encoding="utf-8"), add_bos=True)
        if limit is not None and len(out) >= limit:
            break
    return out[:limit] if limit else out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def hardware() -> str:
    import platform

    import jax

    dev = jax.devices()[0]
    return (f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPU cores, "
            f"{platform.machine()}, jax {jax.__version__}")


def write_text(path: Path, text: str) -> None:
    """Write atomically: a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_results(out: Path, name: str, result: dict, plot, markdown, log) -> None:
    """out/NAME.json (the numbers), out/NAME.png (plot(path, result)), out/NAME.md (markdown(result))."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    plot(out / f"{name}.png", result)
    write_text(out / f"{name}.md", markdown(result))
    log(f"wrote {out / name}.md")


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; floats are printed with 4 significant decimals."""
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


class Clock:
    """Elapsed-time log lines for a long script."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
