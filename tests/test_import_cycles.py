"""No import cycles inside capsid_kernels (CPU, reads the source only).

Every module's imports of the package are parsed with ``ast``: module-level and function-level
(lazy) ones, relative (``from . import x``, ``from ..x import y``) and absolute
(``import capsid_kernels.x``, ``from capsid_kernels.x import y``). An edge goes to the module a
statement names: ``from .pkg import name`` points at ``pkg.name`` when that is a module, else at
``pkg`` itself. Parent packages that Python also executes on the way are not edges (every module
would then reach ``capsid_kernels/__init__``); imports under ``if TYPE_CHECKING:`` never run and
are skipped. A lazy import counts: a cycle through one is still a tangle, and the first call
that runs it is where a partial module would show up.
"""

from __future__ import annotations

import ast
import pathlib

import capsid_kernels

PACKAGE = "capsid_kernels"
ROOT = pathlib.Path(capsid_kernels.__file__).resolve().parent


def package_modules(package: str = PACKAGE, root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Dotted module name -> source file, for every .py file of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([package, *parts])] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path], package: str = PACKAGE) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)

    def known(dotted: str) -> str:
        while dotted not in modules and "." in dotted:  # `import package.x.attr`: the module part
            dotted = dotted.rsplit(".", 1)[0]
        return dotted

    targets = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == package or alias.name.startswith(package + "."):
                    targets.add(known(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
                if source != package and not source.startswith(package + "."):
                    continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else known(source))
    targets.discard(name)  # `from . import x` inside a package's own __init__ resolves to x, never itself
    return {t for t in targets if t in modules}


def import_graph(package: str = PACKAGE, root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (tests/test_gr_layout.py walks capsid_gr with it)."""
    modules = package_modules(package, root)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of every strongly connected component of more than one module (Tarjan): a
    shortest cycle through each of its modules, each cycle once."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles, seen = [], set()
    for comp in sorted(comps, key=min):
        for start in sorted(comp):
            cycle = _cycle_through(graph, comp, start)
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                cycles.append(cycle)
    return cycles


def _cycle_through(graph: dict[str, set[str]], comp: set[str], start: str) -> list[str]:
    """A shortest cycle from ``start`` back to it inside its component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "capsid_kernels.ops.route" in graph["capsid_kernels.ops"]  # `from .route import route`
    assert "capsid_kernels._validate" in graph["capsid_kernels.ops.route"]  # `from .._validate import ...`
    assert "capsid_kernels.ops.route_cuda" in graph["capsid_kernels.ops.route"]  # a function-level import
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == [["a", "b", "a"], ["c", "b", "c"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in capsid_kernels:\n" + "\n".join(" -> ".join(c) for c in cycles)
