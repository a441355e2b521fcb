"""`pip install .` (not editable) gives a working `jaxlm`: the configs and assets are package data.

The wheel is built from a copy of the source tree (so the checkout gets no build/ folder) and
installed into a fresh venv that sees the system's jax (--system-site-packages) but must import
jaxlm from the wheel; the commands run from a folder outside the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cli_helpers import REPO, cli_env, jaxlm

IGNORE = shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                "tests", "benchmarks", "experiments", "docs", "examples")


def test_configs_and_assets_are_package_data():
    import tomllib

    from jaxlm.config.loader import CONFIG_DIR

    package = REPO / "jaxlm"
    assert CONFIG_DIR.resolve().parent == package.resolve()  # shipped inside the package
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["jaxlm"]
    shipped = {p for g in globs for p in package.glob(g) if p.is_file()}
    assert {p for p in CONFIG_DIR.glob("*.yaml")} <= shipped and len(list(CONFIG_DIR.glob("*.yaml"))) >= 10
    assert (package / "assets" / "tokenizer" / "tokenizer.model") in shipped
    assert (REPO / "configs").resolve() == CONFIG_DIR.resolve()  # the repository's configs/ is the same folder


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stderr[-3000:]}"
    return r


@pytest.mark.slow  # ~1-2 min; test_configs_and_assets_are_package_data covers what the wheel must hold
def test_wheel_install_runs_model_info_and_train(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", src, "-w", tmp_path / "wheels"],
        cwd=tmp_path)
    wheel = next((tmp_path / "wheels").glob("jaxlm-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = run([venv / "bin" / "python", "-c", "import jaxlm; print(jaxlm.__file__)"], cwd=work).stdout
    assert where.startswith(str(venv)), f"the venv imports jaxlm from {where}, not from the wheel"
    exe = venv / "bin" / "jaxlm"
    r = jaxlm("model-info", "openelm_270m", exe=exe, cwd=work)
    assert r.returncode == 0 and "271,527,168" in r.stdout, r.stderr[-2000:]
    r = jaxlm("train", "--set", "train.steps=2", "--set", "model.num_layers=2", "--set", "train.batch_size=2",
              "--set", "train.seq_len=32", "--set", "train.sample_tokens=4", exe=exe, cwd=work, env=cli_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert (work / "runs" / "default" / "checkpoints" / "2").is_dir() and "sample" in r.stdout
