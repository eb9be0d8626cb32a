"""No import cycles inside `lmc` (module-level and function-level imports alike).

A cycle means two modules each need the other: the layering (core -> training ->
experiments -> cli) has broken somewhere. `graphlib` names one cycle when it finds it.
"""

import ast
import graphlib
from pathlib import Path

from helpers import ROOT


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    files = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: None if is_package else -1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # A module importing its own package (or itself) is not a cycle.
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def test_lmc_has_no_import_cycles():
    graph = import_graph(ROOT / "lmc")
    assert len(graph) > 40  # the walk found the package
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle in lmc: {' -> '.join(e.args[1])}") from None


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "lmc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from lmc import b\n")
    (pkg / "b.py").write_text("from lmc.a import f\n")
    graph = import_graph(pkg)
    assert graph["lmc.a"] == {"lmc.b"} and graph["lmc.b"] == {"lmc.a"}
