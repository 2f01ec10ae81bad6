import pytest

import fullgraph.checks as checks


def test_importing_the_package_and_plugin_does_not_import_torch(run_python):
    # pytest imports the plugin wherever fullgraph is installed: it must cost next to nothing.
    code = ("import sys, fullgraph.checks, fullgraph.checks.pytest_plugin; "
            "print('torch' in sys.modules)")
    [run] = run_python(["-c", code], timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def test_every_public_name_resolves_to_its_definition():
    for name in checks.__all__:
        value = getattr(checks, name)
        assert getattr(value, "__name__", name) == name or not callable(value), name
    assert set(checks.__all__) <= set(dir(checks))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'fullgraph.checks' has no attribute 'assert_fast'"):
        checks.assert_fast
