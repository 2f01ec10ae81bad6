"""The compile report as data: the one builder of its JSON, and the rewrite that keeps the machine
out of it.

`fullgraph report` (report.Report) and `pytest --fullgraph-report` (the plugin's report of a run)
both build their data with `compile_report`, so the two have the same fields and every string in
either goes through `scrubbed`. docs/report-format.md describes the schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _compat
from .env import site_dirs

__all__ = ["SCHEMA_VERSION", "compile_report", "scrubbed", "local_path"]

# Bump on any change a reader of the JSON could notice; docs/report-format.md lists each version.
SCHEMA_VERSION = 5


def compile_report(*, target: str, command: str, status: str, exception: str | None,
                   crash: dict | None, env: dict, packages: dict[str, str], dynamo_config: dict,
                   summary: dict, graph_breaks: list[dict], compiles: list[dict],
                   cudagraph_skips: list[str], sources: list[dict],
                   tests: dict[str, dict] | None = None) -> dict:
    """A "compile-report", its paths shortened; `tests` only in a test run's report."""
    data = {
        "schema_version": SCHEMA_VERSION,
        "kind": "compile-report",
        "target": target,
        "command": command,
        "exit": {"status": status, "exception": exception},
        "crash": crash,
        "env": dict(env),
        "packages": packages,
        "dynamo_config": dynamo_config,
        "summary": summary,
        "graph_breaks": graph_breaks,
        "compiles": compiles,
        "cudagraph_skips": cudagraph_skips,
        "reproduction": {"command": command, "sources": sources},
        "repros": None,  # fullgraph report --repro fills it in (report.with_repros)
    }
    if tests is not None:
        data["tests"] = tests
    return scrubbed(data)


# -- what may not leave the machine -----------------------------------------------------------

def scrubbed(data: Any) -> Any:
    """`data` with torch's directory written `<torch>`, the directories of installed packages
    `<site-packages>`, the current directory `.` and the home directory `~` in every string, in
    dicts and lists at any depth."""
    return _map_strings(data, _scrubber())


def local_path(reported: str) -> str:
    """The absolute path on this machine of a path as `scrubbed` wrote it (`.`-relative, under
    `<torch>`, `<site-packages>` or `~`), for the process that reads a report back."""
    head, _, rest = reported.partition("/")
    if head == "<site-packages>":
        places = [os.path.join(directory, rest) for directory in site_dirs()]
        return next((place for place in places if os.path.exists(place)), places[0])
    if head == "<torch>":
        return os.path.join(_compat.TORCH_DIR, rest)
    return os.path.abspath(os.path.expanduser(reported))


def _scrubber() -> Callable[[str], str]:
    places = [(_compat.TORCH_DIR, "<torch>"), (os.getcwd(), "."), (os.path.expanduser("~"), "~")]
    places += [(directory, "<site-packages>") for directory in site_dirs()]
    # Longest first: torch lives in a site directory, and either often under the current or the
    # home directory. A root "/" would match every path.
    places = sorted(((os.path.normpath(path), short) for path, short in places
                     if len(Path(path).parts) > 1), key=lambda place: -len(place[0]))
    if not places:
        return lambda text: text
    pattern = re.compile("|".join(f"({re.escape(path)})(?![\\w.-])" for path, _ in places))
    shorts = [short for _, short in places]

    def scrub(text: str) -> str:
        return pattern.sub(lambda match: shorts[match.lastindex - 1], text)

    return scrub


def _map_strings(data: Any, function: Callable[[str], str]) -> Any:
    if isinstance(data, str):
        return function(data)
    if isinstance(data, dict):
        return {key: _map_strings(value, function) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_map_strings(item, function) for item in data]
    return data
