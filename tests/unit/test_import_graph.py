"""No import cycle in ``taskfleet/``: a job's path can be followed by reading imports.

The graph is built statically (``ast``), from every ``import taskfleet...`` and
``from taskfleet... import`` (relative ones too), wherever it stands:

* **Imports inside functions count** like those at module level. Deferring an import into a
  function only hides a cycle from the interpreter, not from the reader; the three cycles
  issue 18 found all closed through one (the persister's ``run_forever`` importing the app,
  ``AsyncClient.__init__`` the sync client, ``storage_from_url`` the memory storage), so a
  module-level-only graph would have passed on them. Each edge of a reported cycle says
  which kind it is, and where.
* **``if TYPE_CHECKING:`` blocks do not count**: they never run.
* ``from package import name`` points at ``package.name`` when that is a module, else at the
  package. Loading a module's parent packages first is Python's doing, not an edge: a
  package's ``__init__`` importing its own modules (its facade) is no cycle, but a module
  importing names from its package's ``__init__``, which imports it back, is.
* Not seen: imports by name at run time (``importlib``, Celery's ``"module:attr"`` strings,
  ``python -m``).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "taskfleet"
MODULE_LEVEL = "module level"

#: One import: (importing module, imported module) -> where it stands, e.g. "line 12, in f()".
Edges = dict[tuple[str, str], str]


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name (a package by its own)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    """Whether ``node`` is an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) block."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    nodes: Iterable[ast.AST], scope: str
) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """The import statements in ``nodes`` and below, each with the function it stands in."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, scope
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse, scope)  # only the else branch runs
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports(ast.iter_child_nodes(node), f"in {node.name}()")
        else:
            yield from _imports(ast.iter_child_nodes(node), scope)


def _targets(stmt: ast.Import | ast.ImportFrom, package_here: str) -> list[str]:
    """The dotted names an import statement loads (a name may be a module's attribute)."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    base = stmt.module or ""
    if stmt.level:  # relative: level 1 is this module's package, 2 its parent...
        parts = package_here.split(".")
        anchor = parts[: len(parts) - stmt.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return [f"{base}.{alias.name}" for alias in stmt.names]


def import_edges(root: Path, package: str = PACKAGE) -> Edges:
    """Every import of one of ``package``'s modules by another, with where it stands."""
    modules = modules_of(root, package)
    edges: Edges = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for stmt, scope in _imports(tree.body, MODULE_LEVEL):
            for target in _targets(stmt, here):
                while target and target not in modules:  # an attribute: its module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault((name, target), f"line {stmt.lineno}, {scope}")
    return edges


def find_knots(edges: Edges) -> list[set[str]]:
    """The groups of modules that all reach each other (strongly connected, Tarjan)."""
    graph: dict[str, list[str]] = {}
    for source, target in sorted(edges):
        graph.setdefault(source, []).append(target)
        graph.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def find_cycles(edges: Edges) -> list[list[str]]:
    """One shortest cycle through each knot, as a path from its first module back to it."""
    graph: dict[str, list[str]] = {}
    for source, target in sorted(edges):
        graph.setdefault(source, []).append(target)
    return [_path_back(min(group), group, graph) for group in find_knots(edges)]


def _path_back(start: str, group: set[str], graph: dict[str, list[str]]) -> list[str]:
    """The shortest path from ``start`` back to itself inside ``group`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in graph[node]:
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt in group and nxt not in came_from:
                    came_from[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")


def describe(cycle: list[str], edges: Edges) -> str:
    """A cycle, one import a line, each with where it stands."""
    hops = itertools.pairwise(cycle)
    return "\n".join(f"  {a} -> {b}  ({edges[a, b]})" for a, b in hops)


def test_taskfleet_has_no_import_cycle() -> None:
    edges = import_edges(ROOT)
    knots = find_knots(edges)
    report = "\n\n".join(
        f"{', '.join(sorted(knot))}; for example:\n{describe(cycle, edges)}"
        for knot, cycle in zip(knots, find_cycles(edges), strict=True)
    )
    assert not knots, f"{len(knots)} import cycle(s) in taskfleet/ (modules in each):\n{report}"


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The scanner on a small package: what counts, what does not, and how cycles read."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "import pkg.b\nA = 1\n",
        "b.py": "def f():\n    from pkg.sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
        "from .. import b\nfrom . import d\n",
        "sub/d.py": "from pkg import A\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)

    edges = import_edges(tmp_path, "pkg")

    assert edges == {
        ("pkg", "pkg.a"): "line 1, module level",
        ("pkg.a", "pkg.b"): "line 1, module level",
        ("pkg.b", "pkg.sub.c"): "line 2, in f()",
        ("pkg.sub.c", "pkg.b"): "line 4, module level",
        ("pkg.sub.c", "pkg.sub.d"): "line 5, module level",
        ("pkg.sub.d", "pkg"): "line 1, module level",
    }
    cycles = find_cycles(edges)
    assert cycles == [["pkg", "pkg.a", "pkg.b", "pkg.sub.c", "pkg.sub.d", "pkg"]]
    assert "(line 2, in f())" in describe(cycles[0], edges)


def reachable(edges: Edges, start: str) -> set[str]:
    """Every module ``start`` loads, directly or through others."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        for nxt in graph.get(frontier.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_the_result_leg_reads_one_way() -> None:
    """Writers of the stream know its contract, not the persister that drains it.

    (The backend does read ``results.store``: a result gone from Redis is read from Postgres.)
    """
    edges = import_edges(ROOT)
    assert reachable(edges, "taskfleet.results.stream") == set()
    drain_side = {
        f"taskfleet.results.{name}"
        for name in ("persister", "batch", "landing", "pgerrors", "quarantine", "backlog")
    }
    for writer in ("taskfleet.results.backend", "taskfleet.cache.l2"):
        loaded = reachable(edges, writer)
        assert "taskfleet.results.stream" in loaded, writer
        assert not loaded & drain_side, (writer, sorted(loaded & drain_side))
        assert not {m for m in loaded if m.startswith(("taskfleet.workers", "taskfleet.routing"))}
    assert "taskfleet.results.late_replies" in reachable(edges, "taskfleet.results.backend")
