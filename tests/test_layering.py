"""The layers of the package, kept by a check rather than by memory.

A name starting with `_` is its module's own business: no module imports one from another module
or reaches one through a module it imported; what two modules share has a public name (in a
package-private `_module` where only the package uses it). torch's private names are not this
test's concern. model/ never imports checks/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"checks": "fullgraph.checks", "model": "fullgraph.model"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> str:
    """fullgraph.checks.graph_breaks for checks/graph_breaks.py."""
    relative = path.relative_to(ROOT)
    parts = [PACKAGES[relative.parts[0]], *relative.parts[1:-1]]
    if relative.stem != "__init__":
        parts.append(relative.stem)
    return ".".join(parts)


def source_file(module: str) -> Path | None:
    """The file or package folder of a fullgraph module, None for anything else."""
    for folder, package in PACKAGES.items():
        if module == package:
            return ROOT / folder
        if module.startswith(package + "."):
            path = ROOT / folder / Path(*module[len(package) + 1:].split("."))
            if path.is_dir() or path.with_suffix(".py").is_file():
                return path
    return None


def imported_from(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(path: Path) -> list[str]:
    """file:line and the offending code for each private name of another module used in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    is_package = path.name == "__init__.py"
    modules: set[str] = set()  # names bound to fullgraph modules in this file
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if source_file(alias.name) is not None and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            source = imported_from(node, here, is_package)
            if source_file(source) is None:
                continue
            for alias in node.names:
                if source_file(f"{source}.{alias.name}") is not None:
                    modules.add(alias.asname or alias.name)  # a submodule, private or not
                elif is_private(alias.name):
                    found.append((node.lineno, f"{alias.name} imported from {source}"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in sorted(found)]


def sources() -> list[Path]:
    return sorted(path for folder in PACKAGES for path in (ROOT / folder).rglob("*.py"))


def test_no_module_uses_another_modules_private_names():
    found = [line for path in sources() for line in violations(path)]
    assert found == [], "private names used across modules:\n" + "\n".join(found)


def test_the_scan_sees_each_kind_of_reach_into_another_module(tmp_path, monkeypatch):
    # The scan itself can fail: each way of reaching a private name is caught, each allowed
    # spelling passes.
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "__init__.py").write_text("")
    (tmp_path / "checks" / "_helpers.py").write_text("")
    (tmp_path / "checks" / "other.py").write_text("")
    user = tmp_path / "checks" / "user.py"
    user.write_text(
        "import os, sys\n"
        "from . import other, _helpers\n"
        "from .other import _hidden, shown\n"
        "from fullgraph.checks.other import _absolute\n"
        "import fullgraph.checks.other as aliased\n"
        "other._reach()\n"
        "aliased._reach()\n"
        "_helpers.public()\n"
        "os._exit, sys._getframe, self._x, cls._y, other.__name__\n")
    assert violations(user) == [
        "checks/user.py:3: _hidden imported from fullgraph.checks.other",
        "checks/user.py:4: _absolute imported from fullgraph.checks.other",
        "checks/user.py:6: other._reach",
        "checks/user.py:7: aliased._reach",
    ]


def test_model_never_imports_checks():
    found = []
    for path in sorted((ROOT / "model").rglob("*.py")):
        here, is_package = module_name(path), path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [imported_from(node, here, is_package)]
            else:
                continue
            if any(name == "fullgraph.checks" or name.startswith("fullgraph.checks.")
                   for name in names):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
