"""The CLI's modules import at the top and in one direction: no late imports, no cycle.

A late import is how a cycle hides (``dispatch`` importing modules that import it
back); both are read from the source, so the test needs nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bisik.cli
from bisik.cli._main import COMMANDS, build_parser

PACKAGE = "bisik.cli"
CLI_DIR = Path(bisik.cli.__file__).parent


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(CLI_DIR.glob("*.py")):
        name = PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"
        trees[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return trees


def _imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The bisik.cli modules an import statement needs.

    ``from bisik.cli import _x`` needs the submodule ``_x``, not the package's own
    code (Python imports a parent package first, whatever the child).
    """
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        assert node.level == 0, "use absolute imports"
        base = node.module or ""
        names = {
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            for alias in node.names
        }
    return names & modules


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import in a module, late ones included: they are edges all the same."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def test_no_function_level_imports() -> None:
    late = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                late += [
                    f"{name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, ast.Import | ast.ImportFrom)
                ]
    assert late == [], f"imports inside functions: {late}"


def test_no_import_cycle() -> None:
    trees = _modules()
    graph = {
        name: {
            target
            for node in _imports(tree)
            for target in _imported(node, set(trees))
            if target != name
        }
        for name, tree in trees.items()
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_main_has_a_handler_for_every_command() -> None:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if a.dest == "command")
    assert commands.choices is not None
    assert set(commands.choices) == set(COMMANDS)
