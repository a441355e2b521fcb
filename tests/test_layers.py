"""The import structure, read from the source (ast), function-level imports included: packages import
only packages below them in LAYERS, no module imports itself back through others, and the
kernels never import the library. Imports under `if TYPE_CHECKING:` are annotations, not counted.
A function-level import is there only to keep an import light, and says so in a comment."""

import ast
import io
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# From the bottom. A package may import only packages listed before it.
LAYERS = ["errors", "fields", "outputs", "host_malloc", "assets", "parallel", "torch", "kernels_pallas", "ops",
          "tokenizer", "data", "model", "quant", "lora", "variants", "posttrain", "config", "checkpoint", "training",
          "inference", "serving", "eval", "aot", "convert", "cli"]


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


def _function_level_imports(tree: ast.AST) -> list[ast.stmt]:
    found = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return found


def test_every_function_level_import_says_why_it_is_lazy():
    """A function-level import carries a comment saying why ("lazy: ..."): on its own line(s), or for a
    block of consecutive imports (blank lines allowed between them) on the comment line directly above
    the block or on an import above it in the block."""
    uncommented = []
    for f in _modules().values():
        source = f.read_text()
        lines = source.splitlines()
        comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT}
        imports = _function_level_imports(ast.parse(source))
        import_lines = {n for node in imports for n in range(node.lineno, node.end_lineno + 1)}
        for node in imports:
            own = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            above = node.lineno - 1
            while above in import_lines or (above >= 1 and not lines[above - 1].strip()):
                own += [comments[above]] if above in comments else []  # an import above it in the block
                above -= 1
            if above >= 1 and lines[above - 1].lstrip().startswith("#"):
                own.append(comments[above])
            if not any("lazy" in c for c in own):
                uncommented.append(f"{f.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not uncommented, "function-level imports without a `# lazy: why` comment:\n" + "\n".join(uncommented)
