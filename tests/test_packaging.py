"""A plain ``pip install -e .`` must provide every third-party module the runtime imports.

Every ``import`` in intengine/ and kernels/ (at any depth: module level or inside functions) of a
module outside the standard library and this repository must come from a distribution listed in
``[project] dependencies`` of pyproject.toml, unless the import sits in a ``try`` that handles
ImportError (an optional feature that then fails with a one-line message).  An extra such as
``[test]`` does not count: CI's test environment installs it, a user's plain install does not.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_DIRS = ("intengine", "kernels")
LOCAL = {"intengine", "kernels", "export"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
               for n in names)


def runtime_imports(root: Path = ROOT) -> dict[str, list[str]]:
    """Top-level module name -> ["file:line", ...] of unguarded imports in the runtime packages."""
    found: dict[str, list[str]] = {}
    for d in RUNTIME_DIRS:
        for path in sorted((root / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            guarded: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                    for stmt in node.body:
                        guarded.update(id(n) for n in ast.walk(stmt))
            for node in ast.walk(tree):
                if id(node) in guarded:
                    continue
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for m in mods:
                    top = m.split(".")[0]
                    if top in sys.stdlib_module_names or top in LOCAL:
                        continue
                    found.setdefault(top, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def core_distributions(pyproject: Path = ROOT / "pyproject.toml") -> set[str]:
    deps = tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])
    return {_canonical(re.split(r"[\s<>=!~;\[(]", d, maxsplit=1)[0]) for d in deps}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_core_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    dists = md.packages_distributions()
    core = core_distributions(pyproject)
    missing = []
    for mod, where in sorted(runtime_imports().items()):
        names = {_canonical(n) for n in dists.get(mod, [mod])}
        if not names & core:
            missing.append(f"{mod} ({'/'.join(sorted(names))}) imported at {', '.join(where)}")
    return missing


def test_runtime_imports_are_core_dependencies():
    missing = missing_core_dependencies()
    assert not missing, "not in [project] dependencies: " + "; ".join(missing)


def test_check_catches_a_runtime_module_only_in_an_extra(tmp_path):
    """The old pyproject (mpmath only in [test]) fails the check."""
    text = (ROOT / "pyproject.toml").read_text()
    old = re.sub(r'^\s*"mpmath[^\n]*\n', "", text, count=1, flags=re.M)
    assert old != text
    (tmp_path / "pyproject.toml").write_text(old)
    assert any(m.startswith("mpmath ") for m in missing_core_dependencies(tmp_path / "pyproject.toml"))
    assert "mpmath" in runtime_imports()  # certificate.py imports it when it builds a table
