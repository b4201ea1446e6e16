"""The shape of both services (issue 22): no import cycle, counting every import (module level,
inside functions, under ``TYPE_CHECKING``); no function over 60 lines and no module over 300.

import-linter checks the layers between packages (pyproject.toml); these check what it does
not: cycles among the modules of one package, and sizes.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("remediator", "exporter")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 300


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by its dotted name (a package by its own name)."""
    found = {}
    for path in (REPO / package).rglob("*.py"):
        if "." in path.stem:  # gunicorn.conf.py: read by gunicorn, not imported
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, package: str, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ``package`` that ``path`` imports anywhere in its body."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.split(".")[0] == package:
                yield name


def cycles(package: str) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    known = modules(package)
    edges = {
        name: {m for m in imported(path, package, known) if m != name and not name.startswith(m)}
        for name, path in known.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                groups.append(sorted([v, *group]))

    for v in sorted(known):
        if v not in index:
            visit(v)
    return groups


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    assert cycles(package) == []


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the test above: two modules importing each other inside functions are found."""
    pkg = tmp_path / "loopy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from loopy import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import loopy.a\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert cycles("loopy") == [["loopy.a", "loopy.b"]]


def long_functions(path: Path) -> list[str]:
    """``name: lines`` of each function longer than MAX_FUNCTION_LINES (decorators counted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            if (length := node.end_lineno - start + 1) > MAX_FUNCTION_LINES:
                found.append(f"{node.name}: {length}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_and_modules_stay_short(package: str) -> None:
    too_long = {}
    for name, path in sorted(modules(package).items()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        problems = long_functions(path)
        if lines > MAX_MODULE_LINES:
            problems.append(f"module: {lines}")
        if problems:
            too_long[name] = problems
    assert too_long == {}
