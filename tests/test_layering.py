"""Import layering of src/sketchsearch, checked from the source with ``ast`` (nothing is imported).

Rules: (1) no import cycle between modules; (2) ``sketchsearch.methods`` (the package and its modules) imports
none of ``train``, ``eval``, ``retrieval``, ``cli``, ``service``, ``recipes``; (3) ``sketchsearch.data``
imports nothing from ``sketchsearch.methods``.

The graph: one node per module (``x/__init__.py`` is the node ``x``: importing a package imports its
``__init__``). Every ``import`` / ``from ... import`` counts, at module level or inside a function (or under
``if TYPE_CHECKING:``); relative imports are resolved; ``from P import n`` is an edge to ``P.n`` when that
is a module, else to ``P``. An edge goes to the module named, not to the packages above it (whose
``__init__`` Python also runs), so that every submodule does not trivially "import" its own package.
Imports with computed names (``importlib.import_module(f"...{mod}")``) are not seen.

    python tests/test_layering.py [SRC]     # prints the cycles and the layering violations; exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sketchsearch"

#: (layer, layers it must not import, why), names relative to the package
RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "methods",
        ("train", "eval", "retrieval", "cli", "service", "recipes"),
        "methods are models: training, evaluation, search and serving use them, not the reverse",
    ),
    ("data", ("methods",), "data loading knows nothing of the methods that consume it"),
)

Graph = dict[str, dict[str, int]]  # module -> imported module -> first line of such an import


@dataclass(frozen=True)
class Violation:
    source: str
    target: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.source} imports {self.target} (line {self.line}): {self.why}"


def find_modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Every module under ``src/package``: dotted name -> (file, is a package's ``__init__``)."""
    root = src / package
    if not (root / "__init__.py").is_file():
        raise FileNotFoundError(f"src: no package {package!r} under {src}")
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (path, is_pkg)
    return out


def _base(module: str, is_pkg: bool, level: int, where: str) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{where}: relative import with {level} dots goes above the top package")
    return ".".join(parts[: len(parts) - (level - 1)])


def imports_of(module: str, path: Path, is_pkg: bool, modules: Iterable[str], package: str = PACKAGE) -> Graph:
    """The in-package modules that ``module`` (the file ``path``) imports anywhere in its body."""
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if (target == package or target.startswith(package + ".")) and target != module:
            found[target] = min(found.get(target, line), line)  # ast.walk is not in line order

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _base(module, is_pkg, node.level, f"{path}:{node.lineno}")
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            plain = False
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                if sub in known:
                    add(sub, node.lineno)
                else:
                    plain = True
            if plain:
                add(origin, node.lineno)
    return {module: dict(sorted(found.items()))}


def build_graph(src: Path = SRC, package: str = PACKAGE) -> Graph:
    """Module import graph of ``src/package`` (see the module docstring for what counts as an edge)."""
    modules = find_modules(src, package)
    graph: Graph = {}
    for name, (path, is_pkg) in modules.items():
        graph.update(imports_of(name, path, is_pkg, modules, package))
    return graph


def _sccs(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
            out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def find_cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Import cycles, each as a path ``[a, b, ..., a]``: for every import edge that lies on a cycle, the
    shortest cycle through it (duplicates dropped; each rotated to start at its smallest module)."""
    cycles: set[tuple[str, ...]] = set()
    for comp in _sccs(graph):
        members = set(comp)
        if len(comp) == 1 and comp[0] not in graph.get(comp[0], {}):
            continue
        for u in comp:
            for v in graph.get(u, {}):
                if v not in members:
                    continue
                # shortest path v -> u inside the component
                prev: dict[str, str | None] = {v: None}
                queue = deque([v])
                while queue and u not in prev:
                    x = queue.popleft()
                    for y in graph.get(x, {}):
                        if y in members and y not in prev:
                            prev[y] = x
                            queue.append(y)
                back: list[str] = []
                node: str | None = u
                while node is not None:
                    back.append(node)
                    node = prev[node]
                ring = [u, *list(reversed(back))[:-1]]  # u -> v -> ... -> (u), u not repeated
                k = ring.index(min(ring))
                cycles.add(tuple(ring[k:] + ring[:k]))
    return [[*c, c[0]] for c in sorted(cycles)]


def layering_violations(graph: Mapping[str, Mapping[str, int]], package: str = PACKAGE) -> list[Violation]:
    """Imports that break :data:`RULES`, sorted by importing module."""

    def within(name: str, layer: str) -> bool:
        full = f"{package}.{layer}"
        return name == full or name.startswith(full + ".")

    out = []
    for source, targets in sorted(graph.items()):
        for layer, forbidden, why in RULES:
            if not within(source, layer):
                continue
            for target, line in targets.items():
                if any(within(target, f) for f in forbidden):
                    out.append(Violation(source, target, line, why))
    return out


def report(src: Path = SRC) -> list[str]:
    """One line per cycle and per layering violation (empty: the layering holds)."""
    graph = build_graph(src)
    lines = ["import cycle: " + " -> ".join(c) for c in find_cycles(graph)]
    return lines + [f"layering: {v}" for v in layering_violations(graph)]


# ---------------------------------------------------------------------------------------------- the checker
def _write(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


FAKE = {
    "sketchsearch/__init__.py": "from . import a\n",  # a submodule: an edge to it
    "sketchsearch/a.py": (
        "import os\n"
        "from .sub import thing\n"  # a name defined in sub/__init__: an edge to the package
        "def f():\n"
        "    from .b import x\n"  # function level counts
    ),
    "sketchsearch/b.py": "import sketchsearch.a\nfrom sketchsearch import __version__\n",
    "sketchsearch/sub/__init__.py": "from .. import b\nfrom ..a import y\nthing = 1\n",
    "sketchsearch/sub/leaf.py": "from . import thing, other\nfrom .. import sub\n",
    "sketchsearch/methods/__init__.py": "",
    "sketchsearch/methods/m.py": "from ..train import fit\nfrom ..data import d\n",
    "sketchsearch/train.py": "from sketchsearch.methods import m\n",
    "sketchsearch/data/__init__.py": "from ..methods.m import M\nfrom ..recipes import r\n",
}


def test_the_graph_resolves_every_import_form(tmp_path: Path) -> None:
    graph = build_graph(_write(tmp_path, FAKE))
    assert graph == {
        "sketchsearch": {"sketchsearch.a": 1},
        "sketchsearch.a": {"sketchsearch.sub": 2, "sketchsearch.b": 4},
        "sketchsearch.b": {"sketchsearch.a": 1, "sketchsearch": 2},
        "sketchsearch.sub": {"sketchsearch.b": 1, "sketchsearch.a": 2},
        "sketchsearch.sub.leaf": {"sketchsearch.sub": 1},
        "sketchsearch.methods": {},
        "sketchsearch.methods.m": {"sketchsearch.train": 1, "sketchsearch.data": 2},
        "sketchsearch.train": {"sketchsearch.methods.m": 1},
        # a module that does not exist (yet) is kept by name, so the rules still see it
        "sketchsearch.data": {"sketchsearch.methods.m": 1, "sketchsearch.recipes": 2},
    }


def test_cycles_are_reported_as_paths(tmp_path: Path) -> None:
    cycles = find_cycles(build_graph(_write(tmp_path, FAKE)))
    assert [" -> ".join(c) for c in cycles] == [
        "sketchsearch -> sketchsearch.a -> sketchsearch.b -> sketchsearch",
        "sketchsearch.a -> sketchsearch.b -> sketchsearch.a",
        "sketchsearch.a -> sketchsearch.sub -> sketchsearch.a",
        "sketchsearch.a -> sketchsearch.sub -> sketchsearch.b -> sketchsearch.a",
        "sketchsearch.data -> sketchsearch.methods.m -> sketchsearch.data",
        "sketchsearch.methods.m -> sketchsearch.train -> sketchsearch.methods.m",
    ]
    assert find_cycles({"x": {"y": 1}, "y": {}}) == []
    assert find_cycles({"x": {"x": 1}}) == [["x", "x"]]


def test_layering_rules_on_a_fake_tree(tmp_path: Path) -> None:
    found = [(v.source, v.target, v.line) for v in layering_violations(build_graph(_write(tmp_path, FAKE)))]
    assert found == [
        ("sketchsearch.data", "sketchsearch.methods.m", 1),
        ("sketchsearch.methods.m", "sketchsearch.train", 1),
    ]


def test_a_relative_import_above_the_package_is_an_error(tmp_path: Path) -> None:
    import pytest

    _write(tmp_path, {"sketchsearch/__init__.py": "", "sketchsearch/x.py": "from ... import y\n"})
    with pytest.raises(ValueError, match=r"x\.py:1: relative import with 3 dots goes above the top package"):
        build_graph(tmp_path)


# ---------------------------------------------------------------------------------------------- the real tree
def test_the_graph_sees_the_real_imports() -> None:
    graph = build_graph()
    assert len(graph) > 50
    assert {"sketchsearch._io", "sketchsearch.methods.base"} <= set(graph["sketchsearch.model"])


def test_no_import_cycles() -> None:
    cycles = find_cycles(build_graph())
    assert not cycles, f"{len(cycles)} import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_methods_import_no_training_evaluation_search_or_serving() -> None:
    bad = [v for v in layering_violations(build_graph()) if v.source.startswith(f"{PACKAGE}.methods")]
    assert not bad, "\n".join(map(str, bad))


def test_data_imports_no_methods() -> None:
    bad = [v for v in layering_violations(build_graph()) if v.source.startswith(f"{PACKAGE}.data")]
    assert not bad, "\n".join(map(str, bad))


if __name__ == "__main__":
    problems = report(Path(sys.argv[1]) if len(sys.argv) > 1 else SRC)
    print("\n".join(problems) if problems else "layering holds: no cycles, no forbidden imports")
    raise SystemExit(1 if problems else 0)
