"""Every `jaxlm` command shown in README.md's ```bash blocks runs, in order, on a freshly trained
tiny default run, so the README cannot show a command that fails.

Placeholders a reader fills in are filled here: CONFIG -> default, the Llama folder -> the
to-hf output made by the command before it, runs/my_lora -> a LoRA model dir made from the run.
Training commands get a few --set overrides (2 layers, 2 steps) so the run takes seconds.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

from cli_helpers import REPO, jaxlm

FAST_TRAIN = ["--set", "train.steps=2", "--set", "model.num_layers=2", "--set", "train.batch_size=2",
              "--set", "train.seq_len=32", "--set", "train.sample_tokens=8", "--set", "checkpoint.every=1"]
PLACEHOLDERS = {"CONFIG": "default", "~/models/Llama-3.2-1B": "hf/tiny"}
NEEDS_LIBTPU = ("compile",)


def readme_commands(text: str) -> list[list[str]]:
    """The argv (after `jaxlm`) of each jaxlm command in the ```bash blocks, in order; `a && b`
    chains are split and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for tok in tokens + ["&&"]:
                if tok in ("&&", ";", "||"):
                    if segment[:1] == ["jaxlm"]:
                        commands.append(segment[1:])
                    segment = []
                else:
                    segment.append(tok)
    return commands


def test_readme_parser_finds_the_commands():
    cmds = readme_commands((REPO / "README.md").read_text())
    assert cmds[0] == ["train"]  # the set-up block's `pip install -e . && jaxlm train`
    names = {c[0] for c in cmds}
    assert {"train", "generate", "convert", "quantize", "model-info", "tokenizer", "data", "plot", "eval",
            "lora"} <= names


def _make_lora(run: Path, out: Path) -> None:
    import dataclasses

    from jaxlm.checkpoint import load_model, save_model
    from jaxlm.lora.config import LoraConfig
    from jaxlm.quant.checkpoint import tokenizer_files
    from jaxlm.training.state import prepare_model

    run_cfg, model = load_model(run)
    cfg = dataclasses.replace(run_cfg, lora=LoraConfig(enabled=True, rank=4))
    save_model(out, cfg, prepare_model(cfg, model), extra_files=tokenizer_files(run))


def test_every_readme_command_runs(tmp_path):
    commands = readme_commands((REPO / "README.md").read_text())
    for argv in commands:
        argv = [PLACEHOLDERS.get(a, a) for a in argv]
        if argv[0] in NEEDS_LIBTPU and importlib.util.find_spec("libtpu") is None:
            continue  # compiles for a TPU target: needs libtpu
        if argv[0] == "train":
            argv = argv + FAST_TRAIN
        if argv[:2] == ["lora", "merge"]:
            _make_lora(tmp_path / "runs" / "default", tmp_path / argv[argv.index("--ckpt") + 1])
        stdin = "ROMEO:\n" if "--interactive" in argv else None
        r = jaxlm(*argv, cwd=tmp_path, stdin=stdin, timeout=600)
        assert r.returncode == 0 and "Traceback" not in r.stderr, \
            f"README command `jaxlm {shlex.join(argv)}` failed ({r.returncode}):\n{r.stderr[-3000:]}"
