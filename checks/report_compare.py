"""Two reports side by side: `fullgraph report --compare OLD.json`.

Before and after a torch upgrade, or a change to the program: which graph breaks and recompile
causes are new, which are gone, and which changed how often, as Markdown for an issue ("torch
2.15 breaks here, 2.13 did not"). A graph break is the same break in both when its breaking line
(file:line, as the report writes it: relative to where the program ran, an installed package's
under `<site-packages>`), function and gb_type are; a recompile cause when its function and the
guard that failed are (the guard without its cache entry's id and values: "size guard on
x.size()[0]").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TextIO

from ._report_render import resumed_label
from .report import failed_guard

__all__ = ["CompareError", "load_report", "compare", "compare_markdown"]


class CompareError(ValueError):
    """A file given to compare is not a JSON compile report."""


def load_report(path: str, option: str) -> dict:
    """The compile report in `path`, named by `option` ("--compare") in any error."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except OSError as error:
        raise CompareError(f"{option} {path}: cannot read it: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CompareError(f"{option} {path}: not JSON ({error.msg} at line {error.lineno}); "
                           f"write the report with -o report.json") from None
    if not isinstance(data, dict) or data.get("kind") != "compile-report":
        raise CompareError(f"{option} {path}: not a report of `fullgraph report` (its \"kind\" "
                           f"is not \"compile-report\")")
    for key in ("env", "graph_breaks", "compiles"):
        if key not in data:
            raise CompareError(f"{option} {path}: the report has no {key!r}")
    return data


def compare(old: dict, new: dict, *, out: TextIO) -> bool:
    """Print compare_markdown(old, new) to `out`; whether anything is new."""
    text, new_found = compare_markdown(old, new)
    print(text, end="", file=out)
    return new_found


def compare_markdown(old: dict, new: dict) -> tuple[str, bool]:
    """The Markdown comparing report `old` with report `new`, and whether anything is new."""
    old_torch, new_torch = old["env"].get("torch"), new["env"].get("torch")
    out = ["## Compared with the earlier report", ""]
    if old_torch != new_torch:
        out += [f"torch {new_torch} (this run) against torch {old_torch} (the earlier one).", ""]
    sections = [("graph breaks", _breaks(old), _breaks(new), "time"),
                ("recompile causes", _causes(old), _causes(new), "recompile")]
    new_found, differences = False, []
    for noun, before, after, unit in sections:
        lines, found = _section(noun, before, after, unit)
        differences += lines
        new_found = new_found or found
    out += differences or ["Nothing new, gone or changed.", ""]
    return "\n".join(out).rstrip() + "\n", new_found


def _section(noun: str, before: Counter, after: Counter, unit: str) -> tuple[list[str], bool]:
    new = [key for key in after if key not in before]
    gone = [key for key in before if key not in after]
    changed = [key for key in after if key in before and after[key] != before[key]]
    out = []
    if new:
        out += [f"### New {noun}", ""] + [f"- {key} ({_times(after[key], unit)})" for key in new] + [""]
    if gone:
        out += [f"### Gone {noun}", ""] + [f"- {key} ({_times(before[key], unit)} before)"
                                           for key in gone] + [""]
    if changed:
        out += [f"### Changed {noun}", ""]
        out += [f"- {key}: {_times(before[key], unit)} before, {after[key]} now" for key in changed]
        out.append("")
    return out, bool(new)


def _times(count: int, unit: str) -> str:
    return f"{count} {unit}{'' if count == 1 else 's'}"


def _breaks(data: dict) -> Counter:
    """`file:line` in function: gb_type -> how many compiles met it, disable'd calls left out."""
    found: Counter = Counter()
    for brk in data["graph_breaks"]:
        if brk.get("disabled"):
            continue
        where = brk["frames"][-1] if brk["frames"] else {"filename": "?", "lineno": 0, "function": "?"}
        key = (f"`{_installed(where['filename'])}:{where['lineno']}` in `{where['function']}`: "
               f"{brk['gb_type']}")
        found[key] += brk["count"]
    return found


def _causes(data: dict) -> Counter:
    """`function`: the failed guard of the cache entry used last -> how many recompiles it caused."""
    found: Counter = Counter()
    for compile_ in data["compiles"]:
        if not compile_["recompile"]:
            continue
        reason = compile_["reasons"][0] if compile_["reasons"] else compile_["error"] or "unknown"
        function = resumed_label(compile_["function"])
        found[f"`{function}` ({_installed(compile_['filename'])}): {failed_guard(reason)}"] += 1
    return found


# A report before schema 5 wrote an installed package's files where that environment had them:
# two venvs (before and after a torch upgrade) put the same file in two places.
_SITE_DIRECTORY = re.compile(r"\A.*?[/\\](?:site|dist)-packages(?=[/\\])")


def _installed(filename: str) -> str:
    return _SITE_DIRECTORY.sub("<site-packages>", filename)
