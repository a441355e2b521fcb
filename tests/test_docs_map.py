"""Every file path and `jaxlm.` symbol that the README and docs/ name exists, so the code maps cannot drift.

Paths: backticked names under the repository's own folders (`jaxlm/training/loss.py`, `docs/data.md`,
`benchmarks/results/x.md`, with an optional `:line` or `::test`); a bare `name.py` in the same cell or line
as such a path is looked up beside it. Symbols: backticked dotted names starting `jaxlm.`, imported
(module) or looked up (attribute). Names of things a run writes (RUN_DIR/..., runs/...) are not repository
paths and are not checked.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("jaxlm/", "kernels_pallas/", "tests/", "benchmarks/", "experiments/", "docs/", ".ci/")
# The README, the docs, and the code maps in module docstrings.
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "jaxlm").rglob("*.py"))]
TICKED = re.compile(r"`([^`\s]+)`")
SYMBOL = re.compile(r"^jaxlm(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def named_paths(line: str) -> list[str]:
    """The repository paths a doc line names (see the module docstring)."""
    out, folder = [], None
    for name in TICKED.findall(line):
        name = re.split(r"::|:(?=\d)", name)[0].rstrip(".,;")
        placeholder = any(c in name for c in "*<>{}$") or any(part.split(".")[0].isupper() for part in name.split("/"))
        if name.startswith(ROOTS) and not placeholder:
            out.append(name)
            folder = name.rsplit("/", 1)[0] if "." in name.rsplit("/", 1)[-1] else name.rstrip("/")
        elif folder and re.fullmatch(r"[a-z_0-9]+\.py", name):
            out.append(f"{folder}/{name}")
        elif "/" in name:  # another project's path: bare names after it are its files
            folder = None
    return out


def named_symbols(line: str) -> list[str]:
    return [name.rstrip("()") for name in TICKED.findall(line) if SYMBOL.match(name.rstrip("()"))]


def resolves(symbol: str) -> bool:
    parts = symbol.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                try:
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                except (ImportError, AttributeError):
                    return False
            else:
                obj = getattr(obj, attr)
        return True
    return False


def references():
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(REPO)}:{number}"
            yield from (("path", name, where) for name in named_paths(line))
            yield from (("symbol", name, where) for name in named_symbols(line))


def test_every_path_and_symbol_the_docs_name_exists():
    missing = [f"{where}: {kind} {name}" for kind, name, where in references()
               if not (resolves(name) if kind == "symbol" else (REPO / name).exists())]
    assert not missing, "the docs name what is not there (moved or renamed?):\n" + "\n".join(missing)


def test_the_check_sees_a_renamed_file(tmp_path):
    line = "| `jaxlm/training/loss.py`, `step.py`, `renamed_away.py` | `jaxlm.training.no_such_thing` |"
    assert named_paths(line) == ["jaxlm/training/loss.py", "jaxlm/training/step.py", "jaxlm/training/renamed_away.py"]
    assert not (REPO / named_paths(line)[2]).exists()
    assert resolves("jaxlm.training.loss.loss_sums") and not resolves(named_symbols(line)[0])
    assert len(list(references())) > 100  # the docs' maps are being read at all


