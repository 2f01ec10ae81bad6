import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import fullgraph.checks as checks
from fullgraph.checks.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_package_and_plugin_does_not_import_torch(run_python):
    # pytest imports the plugin wherever fullgraph is installed: it must cost next to nothing.
    code = ("import sys, fullgraph.checks, fullgraph.checks.pytest_plugin; "
            "print('torch' in sys.modules)")
    [run] = run_python(["-c", code], timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def typing_imports() -> dict[str, str]:
    """{name: submodule} of the imports under `if TYPE_CHECKING:` in checks/__init__.py."""
    tree = ast.parse(Path(inspect.getfile(checks)).read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    names: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            assert alias.name not in names, f"{alias.name} imported twice"
            names[alias.name] = node.module
    return names


def test_every_export_is_the_object_its_module_defines_even_after_the_submodules_are_imported():
    # Importing fullgraph.checks.x binds x on the package to the module, so an export named like
    # a submodule turns into that module as soon as anything imports it.
    submodules = {module.name for module in pkgutil.iter_modules(checks.__path__)}
    for name in submodules:
        importlib.import_module(f"fullgraph.checks.{name}")
    exports = typing_imports()
    assert sorted(exports) == sorted(checks.__all__)
    for name, module_name in exports.items():
        assert name not in submodules, f"export {name} has the name of a submodule"
        module = importlib.import_module(f"fullgraph.checks.{module_name}")
        value = getattr(checks, name)
        assert value is getattr(module, name), name
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__module__, value.__qualname__) == (module.__name__, name)
    assert set(checks.__all__) <= set(dir(checks))


def test_every_export_is_documented_in_the_checkers_page():
    page = (ROOT / "docs" / "checks.md").read_text()
    assert [name for name in checks.__all__ if not re.search(rf"\b{name}\b", page)] == []


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'fullgraph.checks' has no attribute 'assert_fast'"):
        checks.assert_fast  # noqa: B018 (the attribute access is what is tested)


def test_version_prints_the_installed_distributions_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    version = importlib.metadata.version("fullgraph")
    assert capsys.readouterr().out == f"fullgraph {version}\n"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(version)}"$', pyproject, re.MULTILINE)


@pytest.mark.parametrize("args", [["--version"], ["frobnicate"]])
def test_python_dash_m_fullgraph_is_the_fullgraph_command(args, run_python):
    command = Path(sys.executable).with_name("fullgraph")  # the console script pip wrote
    # One at a time: run_python stops the others when one fails, and "frobnicate" fails.
    runs = [run_python(argv + args, timeout=60)[0] for argv in ([str(command)], ["-m", "fullgraph"])]
    assert runs[0].returncode == (2 if args == ["frobnicate"] else 0)
    assert [(r.returncode, r.stdout, r.stderr) for r in runs[1:]] == [
        (runs[0].returncode, runs[0].stdout, runs[0].stderr)]
