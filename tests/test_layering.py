"""The package's layering: no import cycle between its modules, no import from a lower stage of a higher one.

Every import statement of every `.py` file under `dinov3_us/` counts, wherever it is (module level, inside
a function, under `if TYPE_CHECKING`); relative imports are resolved. Importing `a.b.c` also runs the
`__init__` of `a.b` unless the importer lives in `a.b` already, so that is an edge too. `LAYERS` is the
table that `dinov3_us/__init__.py`'s docstring states (checked too): rank -> the stages (a module or a
subpackage directly under `dinov3_us/`) of that rank.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dinov3_us

PACKAGE = "dinov3_us"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "log", "dtypes", "fileio", "rendezvous", "distributed"),
    1: ("layers", "models", "loss", "fsdp"),
    2: ("configs",),
    3: ("data",),
    4: ("checkpointer",),
    5: ("run_dir",),
    6: ("weights",),
    7: ("train",),
    8: ("eval",),
    9: ("hub", "launch"),
}

RANK = {stage: rank for rank, stages in LAYERS.items() for stage in stages}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its `__init__.py`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _own_packages(module: str, is_package: bool) -> set[str]:
    """The packages that are already being imported while `module` runs: its own and their ancestors."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(root: Path = ROOT, skip=()) -> dict[tuple[str, str], tuple[Path, int]]:
    """(importer, imported) -> (file, line) of its first import, for every import of a package module.

    `skip`: (importer, imported module) pairs whose imports are left out, with the `__init__` edges they imply.
    """
    files = module_files(root)
    edges: dict[tuple[str, str], tuple[Path, int]] = {}

    def add(src: str, target: str, own: set[str], where: tuple[Path, int]) -> None:
        while target and target not in files:  # `import dinov3_us.x.attr` style: the module part
            target = target.rpartition(".")[0]
        if not target.startswith(PACKAGE) or (src, target) in skip:
            return
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # the target and the packages whose __init__ it runs
            name = ".".join(parts[:i])
            if name != src and (name == target or name not in own) and name in files:
                edges.setdefault((src, name), where)

    for module, path in files.items():
        is_package = path.name == "__init__.py"
        own = _own_packages(module, is_package)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = (path, getattr(node, "lineno", 0))
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(PACKAGE):
                        add(module, alias.name, own, where)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                if not base.startswith(PACKAGE):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in files:  # `from pkg import submodule`: the submodule (and pkg's __init__ unless own)
                        add(module, sub, own, where)
                    else:  # `from module import name`: that module runs to its end first
                        add(module, base, own - {base}, where)
    return edges


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


def find_cycles(edges) -> list[list[str]]:
    """One cycle (a path a -> ... -> a) per strongly connected group of modules that import each other."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v: str) -> None:  # Tarjan, iteratively: the package graph is deep enough for recursion
        work = [(v, iter(sorted(graph.get(v, []))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, [])))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.add(w)
                        if w == node:
                            break
                    if len(group) > 1:
                        groups.append(group)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for group in groups:  # a shortest way back to the group's first module, by breadth-first search
        start = min(group)
        previous = {start: None}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for w in sorted(graph.get(node, [])):
                if w == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    cycles.append([*reversed(path), start])
                    queue = []
                    break
                if w in group and w not in previous:
                    previous[w] = node
                    queue.append(w)
    return cycles


def test_docstring_states_the_same_layers():
    table = {}
    for line in (dinov3_us.__doc__ or "").splitlines():
        m = re.match(r"^\s+(\d+)\s{2,}\S.*?\s{2,}([a-z_]+(?:, [a-z_]+)*)\s*$", line)
        if m:
            table[int(m.group(1))] = tuple(s.strip() for s in m.group(2).split(","))
    assert table == LAYERS, f"dinov3_us/__init__.py's layering table {table} differs from LAYERS {LAYERS}"


def test_every_stage_has_a_rank():
    stages = {stage(m) for m in module_files()} - {None}
    unranked = sorted(stages - set(RANK))
    stale = sorted(set(RANK) - stages)
    assert not unranked, f"dinov3_us/{unranked} have no rank: add them to LAYERS and dinov3_us/__init__.py's table"
    assert not stale, f"LAYERS names {stale}, which dinov3_us/ no longer has: remove them there and in the docstring"


def test_root_module_imports_nothing_of_the_package():
    assert not [b for a, b in import_edges() if a == PACKAGE]


def test_no_import_cycle():
    edges = import_edges()
    lines = []
    for cycle in find_cycles(edges):
        hops = [f"{a} ({_rel(edges[a, b][0])}:{edges[a, b][1]})" for a, b in zip(cycle, cycle[1:])]
        lines.append(" -> ".join([*hops, cycle[-1]]))
    assert not lines, "import cycles in dinov3_us:\n" + "\n".join(lines)


def test_no_import_against_the_layering():
    bad = []
    for (a, b), (path, line) in sorted(import_edges().items(), key=lambda e: (str(e[1][0]), e[1][1])):
        sa, sb = stage(a), stage(b)
        if sa is None or sb is None or sa not in RANK or sb not in RANK:
            continue
        if RANK[sb] > RANK[sa]:
            bad.append(f"{_rel(path)}:{line}: {a} imports {b} ({sa}, rank {RANK[sa]} -> {sb}, rank {RANK[sb]})")
    assert not bad, "imports from a lower stage of a higher one (dinov3_us/__init__.py):\n" + "\n".join(bad)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The walker itself: an import inside a function, under TYPE_CHECKING and a relative one are edges."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("def f():\n    from dinov3_us.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .a import x\n")
    (pkg / "sub" / "a.py").write_text("from typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    from ..errors import f\nx = 1\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n")
    edges = set(import_edges(pkg))
    assert {("dinov3_us.errors", "dinov3_us.sub.b"), ("dinov3_us.errors", "dinov3_us.sub"),
            ("dinov3_us.sub", "dinov3_us.sub.a"), ("dinov3_us.sub.a", "dinov3_us.errors"),
            ("dinov3_us.sub.b", "dinov3_us.sub.a")} <= edges
    assert ("dinov3_us.sub.b", "dinov3_us.sub") not in edges  # its own package is already running
    cycles = find_cycles(edges)
    assert cycles and cycles[0][0] == cycles[0][-1] and "dinov3_us.errors" in cycles[0]
