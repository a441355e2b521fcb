"""Every `jaxlm` and `python -m jaxlm.eval` command shown in README.md's ```bash blocks runs, in
order, on a freshly trained tiny default run, and then the ```python snippets run, all in a temporary
folder outside the repository, so the README cannot show a command that fails or one that works only
from the repository root. The chains a user runs are in it: train -> quantize -> generate / eval,
train -> LoRA run -> merge, train -> to-hf -> from-hf.

Placeholders a reader fills in are filled here: CONFIG -> default, the Llama folder -> the
to-hf output made by the command before it. Each command's own exit status and error output are
checked; the other tests run the CLI one process per command (cli_helpers.jaxlm), as a user's shell does.
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
# The bundled chat examples are longer than FAST_TRAIN's rows, and would all be dropped as too long.
# Their validation reads one batch here, not the whole held-back set.
POSTTRAIN_CONFIGS = ("sft_plays", "dpo_plays")
POSTTRAIN_ROWS = ["--set", "train.seq_len=128", "--set", "train.eval_batches=1"]
PLACEHOLDERS = {"CONFIG": "default", "~/models/Llama-3.2-1B": "hf/tiny"}
NEEDS_COMPILER = ("compile",)


PROGRAMS = {("jaxlm",): "jaxlm", ("python", "-m", "jaxlm.eval"): "lm_eval"}


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """(program, argv after it) of each jaxlm and `python -m jaxlm.eval` command in the ```bash blocks,
    in order; `a && b` chains are split and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            segment: list[str] = []
            for tok in tokens + ["&&"]:
                if tok in ("&&", ";", "||"):
                    commands += [(name, segment[len(prefix):]) for prefix, name in PROGRAMS.items()
                                 if tuple(segment[:len(prefix)]) == prefix]
                    segment = []
                else:
                    segment.append(tok)
    return commands


def readme_snippets(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_parser_finds_the_commands():
    text = (REPO / "README.md").read_text()
    cmds = readme_commands(text)
    assert cmds[0] == ("jaxlm", ["train"])  # the set-up block's `pip install -e . && jaxlm train`
    names = {c[0] for p, c in cmds if p == "jaxlm"}
    assert {"train", "generate", "convert", "quantize", "model-info", "tokenizer", "data", "plot", "eval",
            "lora"} <= names
    assert any(p == "lm_eval" for p, _ in cmds) and any("jaxlm.load" in s for s in readme_snippets(text))
    quantized = [c for p, c in cmds if "models/int4" in c]  # the quantized model is used, not only written
    assert [c[0] for c in quantized][:4] == ["quantize", "model-info", "generate", "eval"]


def _compiler_missing(argv: list[str]) -> bool:
    from jaxlm.aot.gpu import is_gpu_topology

    gpu = is_gpu_topology(argv[argv.index("--topology") + 1])
    return importlib.util.find_spec("jax_plugins.xla_cuda12" if gpu else "libtpu") is None


def test_every_readme_command_runs(tmp_path):
    """All commands run in ONE process (readme_runner.py), in order, as `jaxlm.cli.main.main(argv)` (and
    lm-eval's command line as `jaxlm.eval.__main__.main`): the CLI's own code path, without paying
    Python's and JAX's start-up once per command. The folder is a fresh one, not the repository."""
    text = (REPO / "README.md").read_text()
    commands = []
    for program, argv in readme_commands(text):
        argv = [PLACEHOLDERS.get(a, a) for a in argv]
        if argv[0] in NEEDS_COMPILER and _compiler_missing(argv):
            continue  # compiles for a TPU (needs libtpu) or a GPU (JAX's CUDA plugin)
        if argv[0] == "train":
            argv = argv + FAST_TRAIN + (POSTTRAIN_ROWS if argv[1:2] and argv[1] in POSTTRAIN_CONFIGS else [])
        commands.append({"program": program, "argv": argv,
                         "stdin": "ROMEO:\n" if "--interactive" in argv else None})
    commands += [{"program": "python", "code": code} for code in readme_snippets(text)]
    assert not (tmp_path / "jaxlm").exists() and REPO not in tmp_path.parents
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("readme_runner.py"))], cwd=tmp_path,
                       input=json.dumps(commands), capture_output=True, text=True, timeout=900, env=cli_env())
    done = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for cmd in sorted(done, key=lambda c: -c["s"])[:8]:  # shown with pytest -s: where the test's time goes
        print(f"{cmd['s']:6.1f} s  {cmd['program']} {shlex.join(cmd.get('argv', ['<snippet>']))[:100]}")
    for cmd in done:
        shown = f"{cmd['program']} {shlex.join(cmd.get('argv', []))}"
        assert cmd["rc"] == 0 and "Traceback" not in cmd["stderr"], \
            f"README command `{shown}` failed ({cmd['rc']}):\n{cmd['stderr']}"
    assert r.returncode == 0 and len(done) == len(commands), r.stderr[-3000:]
    quantized_eval = next(c for c in done if c.get("argv", [])[:3] == ["eval", "--ckpt", "models/int4"])
    assert "perplexity" in quantized_eval["stdout"]
    lm_eval = next(c for c in done if c["program"] == "lm_eval")
    assert "shakespeare_cloze" in lm_eval["stdout"] and "acc" in lm_eval["stdout"]
