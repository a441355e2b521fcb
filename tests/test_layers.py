"""The import structure, read from the source (ast), function-level imports included: packages import
only packages below them in LAYERS, no module imports itself back through others, and the
kernels never import the library. Imports under `if TYPE_CHECKING:` are annotations, not counted."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# From the bottom. A package may import only packages listed before it.
LAYERS = ["errors", "outputs", "assets", "parallel", "torch", "kernels_pallas", "ops", "tokenizer", "data",
          "model", "quant", "lora", "variants", "config", "checkpoint", "training", "inference", "eval", "aot",
          "convert", "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for root in ("jaxlm", "kernels_pallas"):
        for f in (REPO / root).rglob("*.py"):
            out[".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, at any depth, outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "kernels_pallas":
        return "kernels_pallas"
    return parts[1] if parts[0] == "jaxlm" and len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from pkg import name` counts pkg.name when that is a
    module, else pkg's __init__)."""
    mods = _modules()

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, f in mods.items():
        for _, name in _imports(f):
            target = resolve(name)
            if target and target != m:
                graph[m].add(target)
    return graph


def test_packages_import_only_downward():
    rank = {p: i for i, p in enumerate(LAYERS)}
    mods = _modules()
    assert {_package(m) for m in mods} - {None} == set(LAYERS)  # a new package must be placed in LAYERS
    upward = []
    for m, f in mods.items():
        src = _package(m)
        for line, name in _imports(f):
            dst = _package(name)
            if src and dst and dst != src and rank[dst] > rank[src]:
                upward.append(f"{f.relative_to(REPO)}:{line} ({src}) imports {name} ({dst})")
    assert not upward, "\n".join(upward)


def test_kernels_never_import_the_library_and_tokenizer_data_never_import_the_model():
    for m, f in _modules().items():
        names = [name for _, name in _imports(f)]
        if _package(m) == "kernels_pallas":
            assert not [n for n in names if n.split(".")[0] == "jaxlm"], m
        if _package(m) in ("tokenizer", "data"):
            assert not [n for n in names if _package(n) == "model"], m


def test_no_import_cycle_between_modules():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles
