"""Probe: about 130 `jaxlm` CLI cases and 60 Python-API cases of bad or unusual input, tried as a new,
careless or hostile user would. Not a test: it takes minutes. It prints one line per case (CLEAN /
UNCLEAN and why), a summary `N clean of M`, and writes benchmarks/results/probe_inputs.md.

    python benchmarks/probe_inputs.py                  # builds the fixtures in a temp folder, runs everything
    python benchmarks/probe_inputs.py --fixtures DIR   # reuse (or build once into) DIR
    python benchmarks/probe_inputs.py --only gen-,ev-  # cases whose id contains one of the texts

Clean, for a CLI case: exit 2 with exactly one stderr line (no "Traceback", no "internal error"), or
exit 0 where the input is valid and the output right; done within 60 s; no pre-existing file under
the fixtures or the case's folder changed and no temporary (`.tmp-`, `.old-`, orbax tmp) left behind.
Clean, for an API case: a TypeError / ValueError / JaxlmError raised by jaxlm (not from inside JAX,
numpy or a tokenizer library) whose message names the argument or the problem, or a correct value;
never a hang (60 s) and never a runaway memory use.

CLI cases run as `nice -n 10 python -m jaxlm.cli.main ...` with JAX_PLATFORMS=cpu, two at a time,
each with a 90 s timeout and a 6 GiB memory cap on its process tree.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "probe_inputs.md"
CASE_TIMEOUT = 90  # the subprocess is killed here
CLEAN_WITHIN = 60  # a clean case finishes within this
MEM_CAP = 6 * 2**30  # a case's process tree above this is killed (reading /dev/zero into memory, ...)


def env() -> dict:
    e = dict(os.environ)
    e.pop("JAXLM_DEBUG", None)
    e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return e


# ---- fixtures ----------------------------------------------------------------------------------
def jaxlm_cmd(*args) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "jaxlm.cli.main", *map(str, args)]


def build_fixtures(fx: Path) -> None:
    """fx/run (2 steps, checkpoints 1 and 2), fx/q8 (int8 copy), fx/hf (to-hf), fx/lora (a LoRA model dir),
    fx/tiny.yaml (the run's config as a file), fx/small.txt, fx/corpus/ (two small text files)."""
    if (fx / ".done").exists():
        return
    fx.mkdir(parents=True, exist_ok=True)
    print(f"building fixtures in {fx} ...", flush=True)
    steps = [["train", "--set", "train.steps=2", "--set", "model.num_layers=2", "--set", "train.batch_size=2",
              "--set", "train.seq_len=32", "--set", "train.sample_tokens=8", "--set", "checkpoint.every=1",
              "--set", f"train.out_dir={fx}/run"],
             ["quantize", "--ckpt", fx / "run", "--bits", "8", "--out", fx / "q8"],
             ["convert", "to-hf", "--ckpt", fx / "run", "--out", fx / "hf"]]
    for args in steps:
        r = subprocess.run(jaxlm_cmd(*args), cwd=fx, env=env(), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"fixture step {args[:2]} failed:\n{r.stderr[-3000:]}")
    code = f"""
import dataclasses
from jaxlm.checkpoint import load_model, save_model
from jaxlm.checkpoint.model_dir import tokenizer_files
from jaxlm.lora.config import LoraConfig
from jaxlm.variants import model_for
run_cfg, model = load_model({str(fx / 'run')!r})
cfg = dataclasses.replace(run_cfg, lora=LoraConfig(enabled=True, rank=4))
save_model({str(fx / 'lora')!r}, cfg, model_for(cfg.model, cfg.quant, cfg.lora, base=model),
           extra_files=tokenizer_files({str(fx / 'run')!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"fixture lora failed:\n{r.stderr[-3000:]}")
    (fx / "tiny.yaml").write_text(
        "inherit: default\nmodel: {num_layers: 2, model_dim: 128}\n"
        "train: {steps: 2, batch_size: 2, seq_len: 32, log_every: 1, warmup_steps: 1, sample_prompt: '',\n"
        f"        out_dir: {fx}/unused}}\n"
        "checkpoint: {every: 1, keep: 2, keep_best: 0}\nmesh: {data: 1}\n")
    (fx / "small.txt").write_text("Friends, Romans, countrymen, lend me your ears.\n" * 20)
    (fx / "corpus").mkdir()
    for i in range(2):
        (fx / "corpus" / f"{i}.txt").write_text(f"Fair is foul, and foul is fair {i}.\n" * 80)
    (fx / ".done").write_text("ok")


# ---- digests -----------------------------------------------------------------------------------
def digest(*roots: Path) -> dict[str, str]:
    """{path: sha256 | 'dir' | 'link -> target' | 'fifo' | 'other'}; never opens a FIFO or device."""
    out = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            out[dirpath] = "dir"
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = f"link -> {os.readlink(p)}"
                elif os.path.isdir(p):
                    continue  # walked
                elif os.path.isfile(p):
                    try:
                        with open(p, "rb") as f:
                            out[p] = hashlib.sha256(f.read()).hexdigest()
                    except OSError as e:
                        out[p] = f"unreadable {e.errno}"
                else:
                    out[p] = "fifo" if os.path.exists(p) else "other"
    return out


TEMP_NAME = re.compile(r"\.tmp-\d+$|\.old-\d+$|orbax-checkpoint-tmp")


# ---- CLI cases ---------------------------------------------------------------------------------
@dataclass
class Cli:
    id: str
    args: str | list  # shlex-split after {fx} / {tmp} are replaced; a list is taken element by element
    prep: object = None  # fn(fx, tmp)
    expect: str = "err"  # err: must exit 2 | ok: must exit 0 | any: either, cleanly
    check: object = None  # fn(tmp, stdout) -> None or a complaint (exit 0 only)
    stdin: bytes | None = None
    changes_ok: bool = False  # an exit 0 may change files under tmp (a resumed run)


def fill(text: str, fx: Path, tmp: Path) -> str:
    return text.replace("{fx}", str(fx)).replace("{tmp}", str(tmp))


# preparations
def mkfifo(name):
    return lambda fx, tmp: os.mkfifo(tmp / name)


def write(name, data):
    def prep(fx, tmp):
        p = tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return prep


def copy(what, to=None):
    def prep(fx, tmp):
        shutil.copytree(fx / what, tmp / (to or what), symlinks=True)
    return prep


def symlink(name, target):
    return lambda fx, tmp: os.symlink(fill(target, fx, tmp), tmp / name)


def both(*preps):
    def prep(fx, tmp):
        for p in preps:
            p(fx, tmp)
    return prep


def edit_json(path, fn):
    def prep(fx, tmp):
        p = tmp / path
        p.write_text(json.dumps(fn(json.loads(p.read_text()))))
    return prep


def garbage(n=4096, seed=0):
    return random.Random(seed).randbytes(n)


def chmod000(path):
    return lambda fx, tmp: os.chmod(tmp / path, 0)


def make_dir(name):
    return lambda fx, tmp: (tmp / name).mkdir(parents=True)


def safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def stdout_has(pattern):
    return lambda tmp, out: None if re.search(pattern, out) else f"stdout lacks {pattern!r}: {out[-200:]!r}"


def exists(path):
    return lambda tmp, out: None if (tmp / path).exists() else f"{path} not written"


YAML_BOMB = "inherit: tiny_uniform\nmodel:\n  name: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")) + "]\n"  # 9**9 strings as one value
TINY = "{fx}/tiny.yaml"
TRAIN = "train {fx}/tiny.yaml --set train.out_dir={tmp}/new "
STATS = "data stats {fx}/tiny.yaml "
GEN = "generate --ckpt {fx}/run --max-new-tokens 4 "
EVAL = "eval --ckpt {fx}/run "
FROM_HF = "convert from-hf --hf {tmp}/hf --out {tmp}/jx"
QUANT = "quantize --ckpt {fx}/run --out {tmp}/q "
TOK = "tokenizer train "
PLOT = "plot {tmp}/run"
COMPILE = "compile tiny_uniform --topology "
TASK = "bundled:eval/shakespeare_cloze.yaml"


def src(path: str, extra: str = "") -> str:
    return f"--set 'data.sources=[{{path: {path}{extra}}}]' "


def hf_config(**changes):
    return both(copy("hf"), edit_json("hf/config.json", lambda c: {**c, **changes}))


def metrics(text):
    return both(copy("run"), write("run/metrics.jsonl", text))


CLI_CASES = [
    # -- the command line itself
    Cli("arg-version", "--version"),
    Cli("arg-unknown-flag", GEN + "--prompt hi --temprature 0.5"),  # --temp would be argparse's abbreviation
    Cli("arg-empty-command", ["" ]),
    # -- model-info and config files / values
    Cli("mi-quantized-dir", "model-info --ckpt {fx}/q8", expect="ok", check=stdout_has("total parameters")),
    Cli("mi-hf-folder", "model-info --ckpt {fx}/hf"),
    Cli("mi-seq-len-20-digits", "model-info tiny_uniform --seq-len 99999999999999999999999", expect="any"),
    Cli("mi-layers-zero", "model-info tiny_uniform --set model.num_layers=0"),
    Cli("mi-vocab-1e30", "model-info tiny_uniform --set model.vocab_size=1e30"),
    Cli("mi-head-dim-odd", "model-info tiny_uniform --set model.head_dim=7"),
    Cli("mi-model-dim-huge", "model-info tiny_uniform --set model.model_dim=1000000000", expect="any"),
    Cli("mi-rope-type-bogus", "model-info tiny_uniform --set model.rope_scaling.type=bogus"),
    Cli("mi-fifo-config", "model-info {tmp}/c.yaml", mkfifo("c.yaml")),
    Cli("mi-dev-zero", "model-info /dev/zero"),
    Cli("mi-binary-config", "model-info {tmp}/c.yaml", write("c.yaml", garbage())),
    Cli("mi-zero-length-config", "model-info {tmp}/c.yaml", write("c.yaml", b"")),
    Cli("mi-unicode-path", ["model-info", "{tmp}/模型 ü.yaml"], write("模型 ü.yaml", "inherit: tiny_uniform\n"),
        expect="ok", check=stdout_has("total parameters")),
    Cli("mi-inherit-self", "model-info {tmp}/c.yaml", write("c.yaml", "inherit: c.yaml\n")),
    Cli("mi-inherit-a-folder", "model-info {tmp}/c.yaml", write("c.yaml", "inherit: /tmp\n")),
    Cli("mi-yaml-bomb", "model-info {tmp}/c.yaml", write("c.yaml", YAML_BOMB)),
    Cli("mi-ckpt-symlink-loop", "model-info --ckpt {tmp}/loop", symlink("loop", "{tmp}/loop")),
    # -- train: every check before the first write
    Cli("tr-steps-20-digits", TRAIN + "--set train.steps=100000000000000000000"),
    Cli("tr-out-dir-a-file", TRAIN + "--set train.out_dir={tmp}/a.yaml", write("a.yaml", "x: 1\n")),
    Cli("tr-out-dir-dev-null", TRAIN + "--set train.out_dir=/dev/null"),
    Cli("tr-out-dir-fifo", TRAIN + "--set train.out_dir={tmp}/f", mkfifo("f")),
    Cli("tr-out-dir-under-proc", TRAIN + "--set train.out_dir=/proc/jaxlm-run"),
    Cli("tr-tokenizer-zero-length", TRAIN + "--set data.tokenizer={tmp}/t.model", write("t.model", b"")),
    Cli("tr-tokenizer-fifo", TRAIN + "--set data.tokenizer={tmp}/t.model", mkfifo("t.model")),
    Cli("tr-sources-empty", TRAIN + "--set data.sources=[]"),
    Cli("tr-init-from-missing", TRAIN + "--set train.init_from={tmp}/nope"),
    Cli("tr-init-from-hf-folder", TRAIN + "--set train.init_from={fx}/hf"),
    Cli("tr-init-from-self", TRAIN + "--set train.init_from={tmp}/new"),
    Cli("tr-prepared-not-prepared", TRAIN + "--set data.prepared={fx}/run"),
    Cli("tr-workers-huge", TRAIN + "--set data.workers=100000", expect="any", check=exists("new/config.yaml")),
    Cli("tr-batch-1e9", TRAIN + "--set train.batch_size=1000000000"),
    Cli("tr-config-is-run-dir", "train {fx}/run"),
    Cli("tr-sample-prompt-over-context", ["train", TINY, "--set", "train.out_dir={tmp}/new", "--set",
                                          "train.sample_prompt=" + "ROMEO, speak! " * 200]),
    Cli("tr-compile-cache-a-file", TRAIN + "--set train.compile_cache={tmp}/a.yaml", write("a.yaml", "x: 1\n")),
    Cli("tr-corpus-only-fifo", TRAIN + src("{tmp}/c"), both(make_dir("c"), mkfifo("c/a.txt"))),
    Cli("tr-corpus-binary", TRAIN + src("{tmp}/c"), write("c/a.txt", garbage(20000))),
    Cli("tr-resume-finished-run", "train {tmp}/run/config.yaml --set train.out_dir={tmp}/run "
                                  "--set train.sample_prompt=",
        copy("run"),
        expect="ok", check=stdout_has("step 2"), changes_ok=True),
    Cli("tr-unicode-out-dir", ["train", TINY, "--set", "train.out_dir={tmp}/ünï cødé", "--set", "train.steps=1"],
        expect="ok", check=exists("ünï cødé/config.yaml")),
    # -- data stats / prepare
    Cli("ds-source-a-fifo", STATS + src("{tmp}/a.txt"), mkfifo("a.txt")),
    Cli("ds-folder-with-a-fifo", STATS + src("{tmp}/c"), both(copy("corpus", "c"), mkfifo("c/z.txt")),
        expect="ok", check=stdout_has("documents kept: 2")),
    Cli("ds-folder-symlink-loop", STATS + src("{tmp}/c"), both(copy("corpus", "c"), symlink("c/loop", "{tmp}/c")),
        expect="ok", check=stdout_has("documents kept: 2")),
    Cli("ds-dev-zero", STATS + src("/dev/zero")),
    Cli("ds-jsonl-no-text-field", STATS + src("{tmp}/a.jsonl"), write("a.jsonl", '{"body": "x"}\n' * 5)),
    Cli("ds-zero-length-jsonl", STATS + src("{tmp}/a.jsonl"), write("a.jsonl", b"")),
    Cli("ds-seq-len-1", STATS + src("{fx}/corpus") + "--seq-len 1", expect="any", check=stdout_has("documents kept")),
    Cli("ds-unicode-file-name", STATS + src("{tmp}/c"), write("c/ünï 🦀.txt", "Fair is foul.\n" * 10),
        expect="ok", check=stdout_has("documents kept: 1")),
    Cli("ds-source-a-run-dir", STATS + src("{fx}/run"), expect="any", check=stdout_has("documents kept")),
    Cli("dp-ok", "data prepare {fx}/tiny.yaml " + src("{fx}/corpus") + "--out {tmp}/rows", expect="ok",
        check=exists("rows")),
    Cli("dp-out-empty", ["data", "prepare", TINY, "--out", ""]),
    Cli("dp-out-a-run-dir", "data prepare {fx}/tiny.yaml " + src("{fx}/corpus") + "--out {tmp}/run", copy("run")),
    Cli("dp-out-dev-null", "data prepare {fx}/tiny.yaml " + src("{fx}/corpus") + "--out /dev/null --overwrite"),
    Cli("dp-out-under-a-file", "data prepare {fx}/tiny.yaml " + src("{fx}/corpus") + "--out {tmp}/a.yaml/rows",
        write("a.yaml", "x: 1\n")),
    # -- generate
    Cli("gen-empty-prompt", ["generate", "--ckpt", "{fx}/run", "--prompt", ""]),
    Cli("gen-emoji-prompt", ["generate", "--ckpt", "{fx}/run", "--prompt", "🦀 ROMEO: ü", "--max-new-tokens", "4"],
        expect="ok", check=stdout_has("🦀")),
    Cli("gen-prompt-over-context", ["generate", "--ckpt", "{fx}/run", "--prompt", "ROMEO, speak! " * 400]),
    Cli("gen-new-tokens-over-context", GEN.replace("4", "100000") + "--prompt hi"),
    Cli("gen-temperature-1e39", GEN + "--prompt hi --temperature 1e39"),
    Cli("gen-checkpoints-folder", "generate --ckpt {fx}/run/checkpoints --prompt hi"),
    Cli("gen-ckpt-empty", ["generate", "--ckpt", "", "--prompt", "hi"]),
    Cli("gen-ckpt-fifo", "generate --ckpt {tmp}/f --prompt hi", mkfifo("f")),
    Cli("gen-ckpt-symlink-loop", "generate --ckpt {tmp}/loop --prompt hi", symlink("loop", "{tmp}/loop")),
    Cli("gen-ckpt-hf-folder", "generate --ckpt {fx}/hf --prompt hi"),
    Cli("gen-quantized", "generate --ckpt {fx}/q8 --prompt ROMEO: --max-new-tokens 4", expect="ok"),
    Cli("gen-chat-no-template", GEN + "--chat --prompt hi"),
    Cli("gen-chat-template-zero-length", GEN + "--chat --chat-template {tmp}/t.jinja --prompt hi",
        write("t.jinja", b"")),
    Cli("gen-chat-template-binary", GEN + "--chat --chat-template {tmp}/t.jinja --prompt hi",
        write("t.jinja", garbage())),
    Cli("gen-chat-template-fifo", GEN + "--chat --chat-template {tmp}/t.jinja --prompt hi", mkfifo("t.jinja")),
    Cli("gen-chat-template-raises", GEN + "--chat --chat-template {tmp}/t.jinja --prompt hi",
        write("t.jinja", "{{ raise_exception('this template takes no user turns') }}")),
    Cli("gen-chat-template-huge-loop", GEN + "--chat --chat-template {tmp}/t.jinja --prompt hi",
        write("t.jinja", "{% for i in range(10**9) %}{{ i }}{% endfor %}")),
    Cli("gen-interactive-empty-stdin", GEN + "--interactive", stdin=b"", expect="ok"),
    Cli("gen-interactive-non-utf8-stdin", GEN + "--interactive", stdin=b"\xff\xfe hi\nROMEO:\n", expect="any"),
    # -- eval
    Cli("ev-zero-length-file", EVAL + "--data {tmp}/a.txt", write("a.txt", b"")),
    Cli("ev-one-char", EVAL + "--data {tmp}/a.txt", write("a.txt", "a"), expect="any",
        check=stdout_has("perplexity")),
    Cli("ev-dev-zero", EVAL + "--data /dev/zero"),
    Cli("ev-fifo", EVAL + "--data {tmp}/a.txt", mkfifo("a.txt")),
    Cli("ev-binary", EVAL + "--data {tmp}/a.txt", write("a.txt", garbage())),
    Cli("ev-seq-len-over-context", EVAL + "--data {fx}/small.txt --seq-len 100000"),
    Cli("ev-quantized", "eval --ckpt {fx}/q8 --data {fx}/small.txt", expect="ok", check=stdout_has("perplexity")),
    Cli("ev-task-unknown", EVAL + "--tasks no_such_task_at_all --limit 2"),
    Cli("ev-fewshot-negative", EVAL + f"--tasks {TASK} --limit 2 --num-fewshot -1"),
    Cli("ev-output-onto-input", "eval --ckpt {tmp}/run --tasks " + TASK + " --limit 1 --output {tmp}/run/config.yaml",
        copy("run")),
    # -- convert to-hf / from-hf
    Cli("th-out-empty", ["convert", "to-hf", "--ckpt", "{fx}/run", "--out", ""]),
    Cli("th-max-shard-zero", "convert to-hf --ckpt {fx}/run --out {tmp}/o --max-shard-size 0"),
    Cli("th-max-shard-1-byte", "convert to-hf --ckpt {fx}/run --out {tmp}/o --max-shard-size 1", expect="any",
        check=exists("o/config.json")),
    Cli("th-max-shard-inf", "convert to-hf --ckpt {fx}/run --out {tmp}/o --max-shard-size infGB"),
    Cli("th-lora-dir", "convert to-hf --ckpt {fx}/lora --out {tmp}/o"),
    Cli("th-out-fifo", "convert to-hf --ckpt {fx}/run --out {tmp}/f", mkfifo("f")),
    Cli("fh-jaxlm-dir", "convert from-hf --hf {fx}/run --out {tmp}/jx"),
    Cli("fh-config-a-folder", FROM_HF, both(copy("hf"), lambda fx, tmp: (os.remove(tmp / "hf/config.json"),
                                                                        (tmp / "hf/config.json").mkdir()))),
    Cli("fh-config-fifo", FROM_HF, both(copy("hf"), lambda fx, tmp: (os.remove(tmp / "hf/config.json"),
                                                                    os.mkfifo(tmp / "hf/config.json")))),
    Cli("fh-layers-1e30", FROM_HF, hf_config(num_transformer_layers=1e30, num_hidden_layers=1e30)),
    Cli("fh-vocab-huge", FROM_HF, hf_config(vocab_size=10**12)),
    Cli("fh-tokenizer-garbage", FROM_HF, both(copy("hf"), write("hf/tokenizer.json", garbage()))),
    Cli("fh-safetensors-dev-zero", FROM_HF, both(copy("hf"), lambda fx, tmp: (
        os.remove(tmp / "hf/model.safetensors"), os.symlink("/dev/zero", tmp / "hf/model.safetensors")))),
    Cli("fh-safetensors-header-2-63", FROM_HF, both(copy("hf"), write("hf/model.safetensors",
                                                                     struct.pack("<Q", 2**63) + b"{}"))),
    Cli("fh-tensor-wrong-shape", FROM_HF, both(copy("hf"), write("hf/model.safetensors", safetensors_bytes(
        {"lm_head.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 36]}}, b"\0" * 36)))),
    # -- quantize
    Cli("q-bits-zero", QUANT + "--bits 0"),
    Cli("q-group-zero", QUANT + "--bits 4 --group 0"),
    Cli("q-group-huge", QUANT + "--bits 4 --group 99999999999999999999"),
    Cli("q-gptq-calib-dev-zero", QUANT + "--bits 4 --method gptq --calib /dev/zero"),
    Cli("q-gptq-calib-fifo", QUANT + "--bits 4 --method gptq --calib {tmp}/c.txt", mkfifo("c.txt")),
    Cli("q-calib-with-rtn", QUANT + "--bits 4 --calib {tmp}/nope.txt"),
    Cli("q-quantized-again", "quantize --ckpt {fx}/q8 --bits 4 --out {tmp}/q"),
    Cli("q-out-inside-input", "quantize --ckpt {tmp}/run --bits 4 --out {tmp}/run/checkpoints/2/q", copy("run")),
    Cli("q-int4-g32", QUANT + "--bits 4 --group 32", expect="ok", check=exists("q/config.yaml")),
    # -- lora
    Cli("lora-merge-quantized", "lora merge --ckpt {fx}/q8 --out {tmp}/m"),
    Cli("lora-merge-ok", "lora merge --ckpt {fx}/lora --out {tmp}/m", expect="ok", check=exists("m/config.yaml")),
    Cli("lora-export-plain-run", "lora export --ckpt {fx}/run --out {tmp}/p"),
    Cli("lora-export-ok", "lora export --ckpt {fx}/lora --out {tmp}/p", expect="ok",
        check=exists("p/adapter_config.json")),
    # -- tokenizer train
    Cli("tok-vocab-huge", TOK + "{fx}/corpus --vocab-size 1000000 --output {tmp}/tok"),
    Cli("tok-zero-length", TOK + "{tmp}/a.txt --vocab-size 300 --output {tmp}/tok", write("a.txt", b"")),
    Cli("tok-dev-zero", TOK + "/dev/zero --vocab-size 300 --output {tmp}/tok"),
    Cli("tok-fifo", TOK + "{tmp}/a.txt --vocab-size 300 --output {tmp}/tok", mkfifo("a.txt")),
    Cli("tok-output-a-file", TOK + "{fx}/corpus --vocab-size 300 --output {tmp}/a.txt", write("a.txt", "x")),
    Cli("tok-coverage-nan", TOK + "{fx}/corpus --vocab-size 300 --output {tmp}/tok --character-coverage nan"),
    Cli("tok-binary", TOK + "{tmp}/a.txt --vocab-size 300 --output {tmp}/tok", write("a.txt", garbage(20000))),
    # -- plot
    Cli("plot-zero-length-metrics", PLOT, metrics(b"")),
    Cli("plot-metrics-a-folder", PLOT, both(copy("run"), lambda fx, tmp: (
        os.remove(tmp / "run/metrics.jsonl"), (tmp / "run/metrics.jsonl").mkdir()))),
    Cli("plot-metrics-fifo", PLOT, both(copy("run"), lambda fx, tmp: (
        os.remove(tmp / "run/metrics.jsonl"), os.mkfifo(tmp / "run/metrics.jsonl")))),
    Cli("plot-nan-loss", PLOT, metrics('{"step": 1, "loss": NaN}\n{"step": 2, "loss": 2.0}\n'), expect="any",
        check=exists("run/plots/loss.png")),
    Cli("plot-binary-metrics", PLOT, metrics(garbage())),
    Cli("plot-step-huge", PLOT, metrics('{"step": 100000000000000000000000000000, "loss": 2.0}\n'), expect="any",
        check=exists("run/plots/loss.png")),
    Cli("plot-out-a-file", "plot {fx}/run --out {tmp}/a.txt", write("a.txt", "x")),
    # -- compile (libtpu)
    Cli("co-topology-bogus", COMPILE + "bogus"),
    Cli("co-topology-zero", COMPILE + "v5e:0x0"),
    Cli("co-mesh-not-matching", COMPILE + "v5e:2x2 --mesh.data 3"),
    Cli("co-batch-indivisible", COMPILE + "v5e:2x2 --mesh.data 4 --batch-size 3"),
]


@dataclass
class Result:
    id: str
    kind: str
    clean: bool
    why: str
    seconds: float
    what: str = ""
    detail: str = ""


def tree_rss(proc) -> int:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def run_cli(case: Cli, fx: Path, work: Path) -> Result:
    tmp = work / case.id
    tmp.mkdir(parents=True)
    if isinstance(case.args, str):
        args = shlex.split(fill(case.args, fx, tmp))
    else:
        args = [fill(a, fx, tmp) for a in case.args]
    shown = " ".join(shlex.quote(a if len(a) < 80 else a[:40] + "..." + a[-10:]) for a in args)
    shown = shown.replace(str(tmp), "TMP").replace(str(fx), "FX")
    try:
        if case.prep:
            case.prep(fx, tmp)
    except Exception as e:  # noqa: BLE001
        return Result(case.id, "cli", False, f"probe: preparation failed: {e!r}", 0, shown)
    before = digest(fx, tmp)
    t0 = time.monotonic()
    proc = subprocess.Popen(jaxlm_cmd(*args), cwd=tmp, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    killed = None
    out_box = {}

    def communicate():
        out_box["out"], out_box["err"] = proc.communicate(case.stdin or b"")

    t = threading.Thread(target=communicate, daemon=True)
    t.start()
    peak = 0
    while t.is_alive():
        t.join(0.25)
        peak = max(peak, tree_rss(proc))
        if time.monotonic() - t0 > CASE_TIMEOUT:
            killed = f"hang: still running after {CASE_TIMEOUT} s"
        elif peak > MEM_CAP:
            killed = f"runaway memory: {peak / 2**30:.1f} GiB"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            t.join()
            break
    seconds = time.monotonic() - t0
    out = out_box.get("out", b"").decode(errors="replace")
    err = out_box.get("err", b"").decode(errors="replace")
    after = digest(fx, tmp)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    problems = []
    if killed:
        problems.append(killed)
    rc = proc.returncode
    if not killed:
        if rc not in (0, 2):
            problems.append(f"exit {rc}")
        elif rc == 0 and case.expect == "err":
            problems.append("bad input accepted (exit 0)")
        elif rc == 2 and case.expect == "ok":
            problems.append("valid input refused")
        if "Traceback" in err + out:
            problems.append("traceback")
        if "internal error" in err:
            problems.append("internal error")
        if rc == 2 and len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        if rc == 0:
            noisy = [ln for ln in lines if re.search(r"warn|error|Exception", ln, re.I)
                     and not (case.stdin is not None and ln.startswith("error: "))]  # a bad line of a session
            if noisy:
                problems.append(f"noise on stderr: {noisy[0][:120]!r}")
            if case.check:
                complaint = case.check(tmp, out)
                if complaint:
                    problems.append(complaint)
        if seconds > CLEAN_WITHIN:
            problems.append(f"took {seconds:.0f} s")
    changed = [p for p in before if after.get(p) != before[p]]
    if changed and not (rc == 0 and case.changes_ok):
        short = [x.replace(str(tmp), "TMP").replace(str(fx), "FX") for x in changed[:3]]
        problems.append(f"changed or lost: {', '.join(short)}")
    temps = [p for p in after if TEMP_NAME.search(p)]
    if temps:
        problems.append(f"temporary left: {temps[0].replace(str(tmp), 'TMP').replace(str(fx), 'FX')}")
    if case.id.startswith("tr-") and rc == 2 and (tmp / "new").exists():
        problems.append("train wrote its out_dir before failing")
    last = (lines[-1] if lines else out.strip().splitlines()[-1:] and out.strip().splitlines()[-1] or "")[:300]
    detail = f"exit {rc}: {last}" if not problems or rc == 2 else f"exit {rc}: " + " | ".join(lines[-3:])[:600]
    return Result(case.id, "cli", not problems, "; ".join(problems) or "ok", seconds, shown, detail)


# ---- API cases ---------------------------------------------------------------------------------
@dataclass
class Api:
    id: str
    call: object  # fn(ctx) -> value
    raises: str | None = None  # regex the message of a TypeError / ValueError / JaxlmError must match
    check: object = None  # fn(value) -> None or a complaint; a case with `check` and no `raises` must return
    either: bool = False  # raising (matching `raises`) or returning (passing `check`) are both clean


class Ctx:
    """What API cases use: the loaded models, the fixture paths and a fresh folder per case."""

    def __init__(self, fx: Path, work: Path):
        import jaxlm

        self.jaxlm, self.fx, self.work = jaxlm, fx, work
        self.lm = jaxlm.load(fx / "run")
        self.tmp = work

    def fifo(self, name="f"):
        p = self.tmp / name
        os.mkfifo(p)
        return p

    def file(self, name, data):
        p = self.tmp / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p


def is_str(v):
    return None if isinstance(v, str) else f"returned {v!r}, not a str"


def finite_number(v):
    import math

    return None if isinstance(v, float) and math.isfinite(v) else f"returned {v!r}"


MSGS = [{"role": "user", "content": "Good morrow."}]
TPL = "bundled:chat/script.jinja"


def _engine(ctx, *a, **k):
    from jaxlm.inference import Engine

    return Engine(*a, **k)


def _sp(**k):
    from jaxlm.inference import SamplingParams

    return SamplingParams(**k)


def _cfg(*a, **k):
    from jaxlm.config import load_run_config

    return load_run_config(*a, **k)


def _from_dict(data, cls=None):
    from jaxlm.config import RunConfig, from_dict

    return from_dict(cls or RunConfig, data)


def _yaml(name):
    from jaxlm.config import load_yaml

    return load_yaml(name)


def _model_cfg():
    from jaxlm.model import ModelConfig

    return ModelConfig


def _load_model(*a, **k):
    from jaxlm.checkpoint import load_model

    return load_model(*a, **k)


def _save_model(*a, **k):
    from jaxlm.checkpoint import save_model

    return save_model(*a, **k)


def _on_token_raises(step, tokens, done):
    raise ValueError("my callback refuses token streams")


API_CASES = [
    # -- jaxlm.load
    Api("load-empty-path", lambda c: c.jaxlm.load(""), r"path|does not exist|not a jaxlm"),
    Api("load-a-file", lambda c: c.jaxlm.load(c.fx / "tiny.yaml"), r"not a jaxlm"),
    Api("load-fifo", lambda c: c.jaxlm.load(c.fifo()), r"not a jaxlm|path"),
    Api("load-hf-folder", lambda c: c.jaxlm.load(c.fx / "hf"), r"not a jaxlm|from-hf"),
    Api("load-tokenizer-fifo", lambda c: c.jaxlm.load(c.fx / "run", tokenizer=c.fifo("t.model")), r"tokenizer"),
    Api("load-tokenizer-garbage", lambda c: c.jaxlm.load(c.fx / "run", tokenizer=c.file("t.model", garbage())),
        r"tokenizer|t\.model"),
    Api("load-quantized", lambda c: c.jaxlm.load(c.fx / "q8").generate("ROMEO:", 3), check=is_str),
    # -- generate
    Api("gen-prompt-bytes", lambda c: c.lm.generate(b"ROMEO:"), r"prompt"),
    Api("gen-prompt-numpy-strs", lambda c: c.lm.generate(__import__("numpy").array(["ROMEO:"]), 3), r"prompt",
        check=lambda v: None if isinstance(v, list) and len(v) == 1 else f"returned {v!r}", either=True),
    Api("gen-prompt-emoji", lambda c: c.lm.generate("🦀 ü ROMEO:", 3), check=is_str),
    Api("gen-prompt-lone-surrogate", lambda c: c.lm.generate("ROMEO:\ud800", 3), r"prompt|surrogate|UTF", check=is_str,
        either=True),
    Api("gen-prompt-over-context", lambda c: c.lm.generate("ROMEO, speak! " * 400, 4), r"context"),
    Api("gen-max-new-2-70", lambda c: c.lm.generate("ROMEO:", 2**70), r"max_new_tokens|context"),
    Api("gen-max-new-numpy-float", lambda c: c.lm.generate("ROMEO:", __import__("numpy").float64(3)),
        r"max_new_tokens"),
    Api("gen-temperature-numpy-nan", lambda c: c.lm.generate("ROMEO:", temperature=__import__("numpy").float32("nan")),
        r"temperature"),
    Api("gen-seed-numpy-negative", lambda c: c.lm.generate("ROMEO:", seed=__import__("numpy").int64(-1)), r"seed"),
    Api("gen-stop-numpy-2d", lambda c: c.lm.generate("ROMEO:", 3, stop_tokens=__import__("numpy").array([[2]])),
        r"stop_tokens", check=is_str, either=True),
    Api("gen-stop-empty", lambda c: c.lm.generate("ROMEO:", 3, stop_tokens=[]), r"stop_tokens", check=is_str,
        either=True),
    Api("gen-positional-sampling", lambda c: c.lm.generate("ROMEO:", 3, 0.5), r"positional|argument"),
    # -- stream
    Api("stream-max-new-zero", lambda c: c.lm.stream("ROMEO:", 0), r"max_new_tokens"),
    Api("stream-stop-a-str", lambda c: c.lm.stream("ROMEO:", 3, stop_tokens="\n"), r"stop_tokens"),
    Api("stream-closed-early", lambda c: (lambda g: (next(g), g.close(), "closed")[2])(c.lm.stream("ROMEO:", 8)),
        check=is_str),
    # -- chat / stream_chat
    Api("chat-role-int", lambda c: c.lm.chat([{"role": 1, "content": "hi"}], chat_template=TPL), r"role"),
    Api("chat-content-list-of-ints", lambda c: c.lm.chat([{"role": "user", "content": [1, 2]}], chat_template=TPL),
        r"content"),
    Api("chat-template-empty-str", lambda c: c.lm.chat(MSGS, chat_template=""), r"chat_template|template"),
    Api("chat-template-raises", lambda c: c.lm.chat(MSGS, chat_template="{{ raise_exception('no users') }}"),
        r"no users|template"),
    Api("chat-batch-one-bad", lambda c: c.lm.chat([MSGS, [{"role": "user"}]], chat_template=TPL), r"message|content"),
    Api("stream-chat-none", lambda c: c.lm.stream_chat(None, chat_template=TPL), r"messages"),
    Api("chat-template-fifo", lambda c: c.lm.chat(MSGS, chat_template=c.fifo("t.jinja")), r"template"),
    # -- logprobs / score / perplexity
    Api("logprobs-one-char", lambda c: c.lm.logprobs("a"), r"token|text",
        check=lambda v: None if isinstance(v, list) else f"returned {v!r}", either=True),
    Api("logprobs-over-context", lambda c: c.lm.logprobs("ROMEO, speak! " * 400), r"context"),
    Api("score-int", lambda c: c.lm.score(5), r"text"),
    Api("perplexity-fifo", lambda c: c.lm.perplexity(path=c.fifo("a.txt")), r"path|data file|not a|regular"),
    Api("perplexity-dev-zero", lambda c: c.lm.perplexity(path="/dev/zero"), r"path|data file|not a|regular"),
    Api("perplexity-zero-length-file", lambda c: c.lm.perplexity(path=c.file("a.txt", b"")), r"empty|token|text"),
    Api("perplexity-binary-file", lambda c: c.lm.perplexity(path=c.file("a.txt", garbage())), r"UTF-8"),
    Api("perplexity-batch-float", lambda c: c.lm.perplexity("To be or not to be", batch_size=2.5), r"batch_size"),
    Api("perplexity-batch-2-70", lambda c: c.lm.perplexity("To be or not to be", batch_size=2**70),
        r"batch_size", check=finite_number, either=True),
    Api("perplexity-one-char", lambda c: c.lm.perplexity("a"), r"token|text", check=finite_number, either=True),
    # -- Engine / SamplingParams
    Api("engine-model-none", lambda c: _engine(c, None), r"model"),
    Api("engine-layers-none", lambda c: _engine(c, c.lm.model, layers=None), r"layers"),
    Api("engine-negative-id", lambda c: c.lm.engine.generate([[1, -1]], 4), r"prompt 0|token id"),
    Api("engine-numpy-prompts", lambda c: c.lm.engine.generate(__import__("numpy").array([[1, 5, 9]]), 3).tokens,
        check=lambda v: None if isinstance(v, list) and len(v) == 1 else f"returned {v!r}"),
    Api("engine-callback-raises", lambda c: c.lm.generate_ids([[1, 5]], 4, on_token=_on_token_raises),
        r"my callback refuses"),
    Api("sampling-top-k-negative", lambda c: _sp(top_k=-1), r"top_k"),
    Api("sampling-top-p-numpy-nan", lambda c: _sp(top_p=__import__("numpy").float64("nan")), r"top_p"),
    # -- jaxlm.config
    Api("config-none", lambda c: _cfg(None), r"config|model"),
    Api("config-overrides-a-str", lambda c: _cfg("tiny_uniform", "model.num_layers=4"), r"overrides|list"),
    Api("config-override-not-str", lambda c: _cfg("tiny_uniform", [("model.num_layers", 4)]), r"override"),
    Api("config-fifo", lambda c: _cfg(c.fifo("c.yaml")), r"config|c\.yaml"),
    Api("config-dev-zero", lambda c: _cfg("/dev/zero"), r"config|zero"),
    Api("from-dict-model-str", lambda c: _from_dict({"model": "tiny_uniform"}), r"model"),
    Api("from-dict-name-int", lambda c: _from_dict({"name": 5}, _model_cfg()), r"name"),
    Api("from-dict-train-a-list", lambda c: _from_dict({**_yaml("tiny_uniform"), "train": [1]}), r"train"),
    # -- jaxlm.checkpoint
    Api("load-model-empty", lambda c: _load_model(""), r"path|not a jaxlm|does not exist"),
    Api("load-model-hf", lambda c: _load_model(c.fx / "hf"), r"not a jaxlm"),
    Api("load-model-run-cfg-str", lambda c: _load_model(c.fx / "run", run_cfg="x"), r"run_cfg"),
    Api("save-model-onto-run", lambda c: _save_model(c.fx / "run", c.lm.model and _load_model(c.fx / "run")[0],
                                                     c.lm.model), r"exists|--overwrite|overwrite"),
    Api("save-model-none-model", lambda c: _save_model(c.tmp / "m", _load_model(c.fx / "run")[0], None), r"model"),
    Api("save-model-cfg-dict", lambda c: _save_model(c.tmp / "m", {"model": {}}, c.lm.model), r"run_cfg|config"),
]

OK_TYPES = ("TypeError", "ValueError")


def api_worker(fx: Path, work: Path, start: int, only: str) -> None:
    """Runs API cases from index `start`, printing one JSON line before and after each."""
    os.environ.update(JAX_PLATFORMS="cpu")
    from jaxlm.errors import JaxlmError

    ctx = Ctx(fx, work)
    for i, case in enumerate(API_CASES):
        if i < start or not selected(case.id, only):
            continue
        ctx.tmp = work / f"api-{case.id}"
        ctx.tmp.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"i": i, "start": True}), flush=True)
        t0 = time.monotonic()
        problems, detail = [], ""
        try:
            value = case.call(ctx)
        except BaseException as e:  # noqa: BLE001
            detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            frames = traceback.extract_tb(e.__traceback__)
            inner = frames[-1].filename if frames else ""
            ours = isinstance(e, JaxlmError)
            if not (ours or isinstance(e, (TypeError, ValueError))):
                problems.append(f"raised {type(e).__name__}")
            elif not ours and "/jaxlm/" not in inner and os.path.abspath(inner) != os.path.abspath(__file__):
                problems.append(f"raised from inside {inner.split('site-packages/')[-1].split('/')[0] or inner}")
            if case.raises is None:
                problems.append("raised where a value was expected")
            elif not re.search(case.raises, str(e), re.I):
                problems.append(f"message does not name the argument ({case.raises!r})")
        else:
            detail = f"returned {value!r}"[:200]
            if case.check is None:
                problems.append("bad input accepted (no error)")
            else:
                complaint = case.check(value)
                if complaint:
                    problems.append(complaint)
        seconds = time.monotonic() - t0
        if seconds > CLEAN_WITHIN:
            problems.append(f"took {seconds:.0f} s")
        print(json.dumps({"i": i, "clean": not problems, "why": "; ".join(problems) or "ok", "detail": detail,
                          "seconds": seconds}), flush=True)


def run_api(fx: Path, work: Path, only: str) -> list[Result]:
    results: dict[int, Result] = {}
    wanted = [i for i, c in enumerate(API_CASES) if selected(c.id, only)]
    start = 0
    while wanted and start <= wanted[-1]:
        proc = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--api-worker", "--fixtures", str(fx),
                                 "--work", str(work), "--start", str(start), "--only", only],
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)], daemon=True).start()
        err_tail: list[str] = []
        threading.Thread(target=lambda: [err_tail.append(ln) for ln in proc.stderr], daemon=True).start()
        current, t0, started_at = None, time.monotonic(), time.monotonic()
        while True:
            try:
                ln = lines.get(timeout=0.25)
            except queue.Empty:
                ln = ""
            if ln is None:  # the worker ended
                if current is not None:
                    results[current] = Result(API_CASES[current].id, "api", False, f"worker died: "
                                              f"{''.join(err_tail[-3:]).strip()[:300]}", time.monotonic() - t0)
                    start = current + 1
                else:
                    if start == 0 and not results and err_tail:
                        sys.exit("API worker failed to start:\n" + "".join(err_tail[-20:]))
                    start = (wanted[-1] + 1)
                break
            if ln:
                msg = json.loads(ln)
                if msg.get("start"):
                    current, t0 = msg["i"], time.monotonic()
                else:
                    c = API_CASES[msg["i"]]
                    results[msg["i"]] = Result(c.id, "api", msg["clean"], msg["why"], msg["seconds"], "", msg["detail"])
                    print_result(results[msg["i"]])
                    current = None
                continue
            why = None
            if current is not None and time.monotonic() - t0 > CASE_TIMEOUT:
                why = f"hang: still running after {CASE_TIMEOUT} s"
            elif tree_rss(proc) > MEM_CAP:
                why = f"runaway memory: {tree_rss(proc) / 2**30:.1f} GiB"
            elif current is None and time.monotonic() - started_at > 300:
                why = "worker start-up took over 300 s"
            if why:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if current is not None:
                    results[current] = Result(API_CASES[current].id, "api", False, why, time.monotonic() - t0)
                    print_result(results[current])
                    start = current + 1
                else:
                    sys.exit(why)
                break
        proc.wait()
    return [results[i] for i in sorted(results)]


# ---- the run -----------------------------------------------------------------------------------
def selected(case_id: str, only: str) -> bool:
    return any(part in case_id for part in only.split(","))


_print_lock = threading.Lock()


def print_result(r: Result) -> None:
    with _print_lock:
        print(f"{'CLEAN  ' if r.clean else 'UNCLEAN'} {r.kind} {r.id:<36} {r.seconds:5.1f} s  "
              f"{'' if r.clean else r.why + '  '}[{r.detail[:160]}]", flush=True)


def write_results(results: list[Result], loads: tuple, started: str, seconds: float, note: str = "") -> None:
    clean = sum(r.clean for r in results)
    n_cli = sum(r.kind == "cli" for r in results)
    rows = []
    for r in results:
        what = r.what.replace("|", "\\|") if r.kind == "cli" else ""
        detail = r.detail.replace("|", "\\|").replace("\n", " ")[:220]
        rows.append(f"| {r.kind} | `{r.id}` | {'clean' if r.clean else '**UNCLEAN**'} | "
                    f"{'' if r.clean else r.why.replace('|', '/')} | {r.seconds:.1f} | "
                    f"{('`' + what + '` ') if what else ''}{detail} |")
    noted = "\n\n" + note if note else ""
    text = f"""# Bad and unusual input: a probe of the CLI and the Python API

`python benchmarks/probe_inputs.py` ({started}, {seconds / 60:.1f} min; load average {loads[0]:.2f} before,
{loads[1]:.2f} after, on {os.cpu_count()} cores shared with other work; CLI cases two at a time under `nice -n 10`).

**{clean} clean of {len(results)}** ({sum(r.clean for r in results if r.kind == 'cli')} of {n_cli} CLI cases,
{sum(r.clean for r in results if r.kind == 'api')} of {len(results) - n_cli} API cases).{noted}

Clean, for a CLI case: exit 2 with exactly one stderr line (no traceback, no "internal error"), or exit 0
where the input is valid and the output right; within {CLEAN_WITHIN} s; no pre-existing file changed and no
temporary left behind. For an API case: a TypeError / ValueError / JaxlmError raised by jaxlm whose message
names the argument, or a correct value; no hang, no runaway memory. FX is the fixtures folder (a 2-step run,
its int8 copy, its to-hf export, a LoRA model dir), TMP the case's own folder.

| kind | case | result | why | s | command / outcome |
| --- | --- | --- | --- | ---: | --- |
""" + "\n".join(rows) + "\n"
    RESULTS.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=None)
    ap.add_argument("--only", default="", help="run the cases whose id contains this (or one of A,B,...)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-write", action="store_true", help="do not write the results file")
    ap.add_argument("--note", default="", help="a paragraph for the results file (e.g. an earlier run's count)")
    ap.add_argument("--api-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.api_worker:
        return api_worker(args.fixtures, args.work, args.start, args.only)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="jaxlm-probe-") as scratch:
        fx = args.fixtures or Path(scratch) / "fx"
        build_fixtures(fx.absolute())
        fx = fx.absolute()
        work = Path(scratch) / "cases"
        work.mkdir()
        cases = [c for c in CLI_CASES if selected(c.id, args.only)]
        results: list[Result] = []
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for r in pool.map(lambda c: run_cli(c, fx, work), cases):
                print_result(r)
                results.append(r)
        results += run_api(fx, work, args.only)
        for p in work.rglob("*"):  # chmod 000 cases: make the scratch folder removable
            if not p.is_symlink():
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    seconds = time.monotonic() - t0
    clean = sum(r.clean for r in results)
    print(f"\n{clean} clean of {len(results)} ({sum(r.kind == 'cli' for r in results)} CLI, "
          f"{sum(r.kind == 'api' for r in results)} API); {seconds / 60:.1f} min")
    for r in results:
        if not r.clean:
            print(f"  UNCLEAN {r.kind} {r.id}: {r.why}")
    if not args.no_write and not args.only:
        write_results(results, (load_before, os.getloadavg()[0]), started, seconds, args.note)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
