"""The lint rules the code follows ([tool.ruff] in pyproject.toml: import order, unused and undefined names,
pycodestyle), checked over the whole repository with ruff, so the README's test command and .ci/run enforce them."""

import shutil
import subprocess
import sys

from conftest import REPO


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or f"{sys.executable} -m ruff"
    out = subprocess.run(f"{ruff} check --no-cache --output-format concise .", shell=True, cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, f"ruff check . (fix with `ruff check --fix .` where it can):\n{out.stdout[-4000:]}"
