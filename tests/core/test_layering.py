"""The dependency arrow points one way: flows/ and tasks/ import moeprune, never the reverse.

Every module of src/moeprune is read with `ast`: none may import flows, tasks, prefect or dvc (the
orchestration lives outside the package), and only the registry package may import mlflow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "moeprune"
ORCHESTRATION = {"flows", "tasks", "prefect", "dvc"}
MLFLOW_HOME = PACKAGE / "registry"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import, and of `importlib.import_module("...")` / `__import__("...")`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, module in imported_modules(tree):
            top = module.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
            if top in ORCHESTRATION:
                found.append(where)
            elif top == "mlflow" and MLFLOW_HOME not in path.parents:
                found.append(f"{where} (mlflow only in moeprune/registry/)")
    return found


def test_the_core_imports_no_orchestration_and_mlflow_only_in_the_registry():
    assert violations() == []


def test_the_check_sees_every_kind_of_import():
    source = "import prefect\nfrom flows.sweep import x\nimport importlib\nimportlib.import_module('tasks.stages')\n"
    modules = [module for _, module in imported_modules(ast.parse(source))]
    assert modules == ["prefect", "flows.sweep", "importlib", "tasks.stages"]
