"""The import rule of docs/architecture.md, checked on every module of the package.

Stages import only from stages before them (spectral -> io/runtime -> extract/analysis -> finetune -> results),
and the command line reaches the library through :mod:`sdetool.api` alone. Function-level imports count.
"""

from __future__ import annotations

import ast
import os

import pytest

import sdetool

PACKAGE = os.path.dirname(sdetool.__file__)
ROOT = "sdetool"  # `from sdetool import __version__`
# package -> the packages (and root modules) it may import; every package may import itself and errors
ALLOWED = {
    "spectral": set(),
    "io": {"spectral", ROOT},
    "runtime": {"spectral"},
    "extract": {"io", "runtime", ROOT},
    "analysis": {"spectral", "io", "runtime", ROOT},
    "finetune": {"spectral", "io", "runtime", "extract", "analysis", "monitor", ROOT},
    "results": {"spectral", "io", "runtime", "extract", "analysis", "finetune", ROOT},
    "cli": {"api", ROOT},
    "api": {"spectral", "io", "runtime", "extract", "analysis", "finetune", "results"},
    "errors": set(),
    "monitor": {"spectral"},
    "models": set(),  # the old name of python -m sdetool.models.train_lit (runpy only)
    "__init__": {"api"},  # and, lazily, what api names (SpectralBands through api)
    "__main__": {"cli"},
}


def _modules():
    for folder, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PACKAGE), path


def _owner(relative: str) -> str:
    head = relative.split(os.sep)[0]
    return head[:-3] if head.endswith(".py") else head


def _imported(tree: ast.AST):
    """(line, first component under sdetool) of every sdetool import in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sdetool":
                    yield node.lineno, parts[1] if len(parts) > 1 else ROOT
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "sdetool":
                continue
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:
                for alias in node.names:  # from sdetool import api / __version__
                    yield node.lineno, alias.name if alias.name in ALLOWED else ROOT


def test_every_package_is_in_the_rule():
    owners = {_owner(relative) for relative, _ in _modules()}
    assert owners <= set(ALLOWED), owners - set(ALLOWED)


@pytest.mark.parametrize("relative,path", list(_modules()), ids=lambda value: str(value))
def test_imports_follow_the_stage_order(relative, path):
    owner = _owner(relative)
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    allowed = ALLOWED[owner] | {owner, "errors"}
    bad = [(line, target) for line, target in _imported(tree) if target not in allowed]
    assert not bad, f"sdetool/{relative} imports {bad} ({owner} may import {sorted(allowed)})"


def test_no_relative_imports():
    for relative, path in _modules():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level], relative
