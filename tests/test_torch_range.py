"""The torch range the package declares is the one CI runs the suite at both ends of."""

import re
from importlib.metadata import requires
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def declared_range():
    torch_requirement = next(Requirement(line) for line in requires("fullgraph")
                             if Requirement(line).name == "torch")
    return torch_requirement.specifier


def ci_torch(end):
    """The torch version .ci/run tests at one end of the range ("OLDEST" or "NEWEST")."""
    return Version(re.search(rf"^{end}_TORCH=(\S+)$", (ROOT / ".ci/run").read_text(), re.M)[1])


def test_the_running_torch_is_in_the_declared_range():
    assert Version(torch.__version__).public in declared_range()


def test_ci_runs_the_suite_on_the_first_and_the_last_minor_release_the_range_admits():
    bounds = {spec.operator: Version(spec.version) for spec in declared_range()}
    assert set(bounds) == {">=", "<"}, f"torch{declared_range()} needs a lower and an upper bound"
    oldest, newest = ci_torch("OLDEST"), ci_torch("NEWEST")
    assert oldest == bounds[">="]
    assert newest in declared_range() and Version(f"{newest.major}.{newest.minor + 1}") == bounds["<"]


def test_the_readme_declares_the_same_range():
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"the package itself needs\s+`torch([^`]+)`", readme)[1]
    assert Requirement(f"torch{stated}").specifier == declared_range()
