"""The package's modules import one another in one direction only.

An import circle (registry <-> promotion) once made `mlflow-best-export aliases` and
`rollback` fail in every fresh process while the test suite, whose imports were
already warm, passed. Imports inside functions count too: they run in some order
in some process.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlflow_best_export"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "mlflow_best_export":
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "mlflow_best_export."
        ):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith("mlflow_best_export.")
            }
    return found - {path.stem}


def test_no_module_imports_a_module_that_imports_it_back():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {path.stem: imports_of(path, modules) for path in PACKAGE.glob("*.py")}
    assert graph["registry"] and graph["cli"], "the import graph was not read"
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"import circle: {' -> '.join(err.args[1])}") from None
    # The leaves stay leaves: everything else may build on them.
    for leaf in ("tags", "ranking", "retention", "remote"):
        assert not graph[leaf], (leaf, graph[leaf])
    assert graph["fs"] == {"remote"}, "fs builds on its scheme:// half only"
    assert {m for m, imported in graph.items() if "remote" in imported} == {"fs"}
