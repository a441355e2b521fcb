"""Every `jaxlm` command shown in README.md's ```bash blocks runs, in order, on a freshly trained
tiny default run, so the README cannot show a command that fails.

Placeholders a reader fills in are filled here: CONFIG -> default, the Llama folder -> the
to-hf output made by the command before it, runs/my_lora -> a LoRA model dir made from the run.
Each command's own exit status and error output are checked; the other tests run the CLI one
process per command (cli_helpers.jaxlm), as a user's shell does.
Training commands get a few --set overrides (2 layers, 2 steps) so the run takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cli_helpers import REPO, cli_env

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


def test_every_readme_command_runs(tmp_path):
    """All commands run in ONE process (readme_runner.py), in order, as `jaxlm.cli.main.main(argv)`:
    the CLI's own code path, without paying Python's and JAX's start-up once per command."""
    commands = []
    for argv in readme_commands((REPO / "README.md").read_text()):
        argv = [PLACEHOLDERS.get(a, a) for a in argv]
        if argv[0] in NEEDS_LIBTPU and importlib.util.find_spec("libtpu") is None:
            continue  # compiles for a TPU target: needs libtpu
        if argv[0] == "train":
            argv = argv + FAST_TRAIN
        lora = None
        if argv[:2] == ["lora", "merge"]:
            lora = [str(tmp_path / "runs" / "default"), str(tmp_path / argv[argv.index("--ckpt") + 1])]
        commands.append({"argv": argv, "stdin": "ROMEO:\n" if "--interactive" in argv else None, "make_lora": lora})
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("readme_runner.py"))], cwd=tmp_path,
                       input=json.dumps(commands), capture_output=True, text=True, timeout=900, env=cli_env())
    done = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for cmd in sorted(done, key=lambda c: -c["s"])[:8]:  # shown with pytest -s: where the test's time goes
        print(f"{cmd['s']:6.1f} s  jaxlm {shlex.join(cmd['argv'])[:100]}")
    for cmd in done:
        assert cmd["rc"] == 0 and "Traceback" not in cmd["stderr"], \
            f"README command `jaxlm {shlex.join(cmd['argv'])}` failed ({cmd['rc']}):\n{cmd['stderr']}"
    assert r.returncode == 0 and len(done) == len(commands), r.stderr[-3000:]
