"""Reports a person can paste into an issue: what torch.compile did while a program ran.

    with watch() as seen:
        main()
    write_report(Report(seen, command="python train.py"), "report.md")

A Report is the environment, the command, how it ended, and what `watch()` saw. `to_dict()` is the
one source every renderer reads: JSON is that dict (docs/report-format.md versions its schema),
Markdown and HTML lay it out; a RecordedReport is that dict, made elsewhere (by the child process
`fullgraph report` runs its program in). The dict is built by _report_data.compile_report, as the
pytest plugin's report of a run is: paths under the current directory are written relative to it,
the home directory as `~` and torch's own directory as `<torch>`, so nothing about the machine
shows beyond the environment block. `CheckReport` does the same for the results of `fullgraph check`.
The renderers that lay the dict out as text live in _report_render; they are imported from here.
"""

from __future__ import annotations

import ast
import linecache
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._message import display_path
from ._report_data import SCHEMA_VERSION, compile_report, scrubbed
from ._report_render import render_html, render_json, render_markdown, resumed_label
from .env import environment, installed_package, packages_of
from .graph_breaks import GraphBreak
from .recompiles import CompileEvent
from .watch import CompileTiming, TransformedCode, Watch

if TYPE_CHECKING:
    from .suite import CheckResult

__all__ = [
    "SCHEMA_VERSION",
    "FORMATS",
    "Report",
    "RecordedReport",
    "ended_outside",
    "with_repros",
    "CheckReport",
    "render_markdown",
    "render_json",
    "render_html",
    "render",
    "write_report",
    "format_for_path",
]

FORMATS = ("md", "json", "html")
_EXTENSIONS = {".md": "md", ".markdown": "md", ".json": "json", ".html": "html", ".htm": "html"}
CONTEXT_LINES = 2  # source lines shown either side of a breaking line


# -- the report model -------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    """What torch.compile did while `command` ran.

    status: "ok", "exception" or "exit N"; exception: "ValueError: boom" when one ended the run.
    target: what ran, for the title (a script, `-m module`, `module:function`); the command if None.
    """

    watch: Watch
    command: str
    status: str = "ok"
    exception: str | None = None
    target: str | None = None
    env: dict = field(default_factory=environment)

    def to_dict(self) -> dict:
        """The report as JSON-safe data, in the schema docs/report-format.md describes."""
        seen = self.watch
        watched = seen.to_dict()
        breaks, timings = seen.graph_breaks, seen.compile_times
        return compile_report(
            target=self.target or self.command, command=self.command, status=self.status,
            exception=self.exception, crash=None, env=self.env,
            packages=packages_of([frame.filename for brk in breaks for frame in brk.frames]
                                 + [event.function.filename for event in seen.compiles]),
            dynamo_config=watched["dynamo_config"],
            summary={**watched["summary"],
                     "compiles": len(seen.compiles),
                     "limit_hits": len(seen.limit_hits),
                     "cudagraph_skips": seen.cudagraph_skip_count,
                     "compile_seconds": round(sum(t.seconds or 0.0 for t in timings), 6)},
            graph_breaks=[_break_dict(brk, seen) for brk in breaks],
            compiles=[_compile_dict(event, timing) for event, timing in zip(seen.compiles, timings)],
            cudagraph_skips=watched["cudagraph_skips"],
            sources=_sources(breaks))


@dataclass(frozen=True)
class RecordedReport:
    """A compile report already made into data (Report.to_dict()), rendered as it is."""

    data: dict

    def to_dict(self) -> dict:
        return self.data


def ended_outside(data: dict, *, status: str, crash: dict | None) -> RecordedReport:
    """The report `data` of a program that did not end by itself, with how it ended as the process
    that started it saw: `status` ("killed by SIGSEGV", "timed out after 2 s") and `crash`
    ({signal, stack, stack_taken} or None), its paths shortened like the rest."""
    return RecordedReport({**data, "exit": {"status": status, "exception": None},
                           "crash": scrubbed(crash)})


def with_repros(data: dict, repros: list[dict]) -> RecordedReport:
    """The report `data` with the standalone repros `fullgraph report --repro` made for its breaks
    (repro.make_repros), their paths and output shortened like the rest."""
    return RecordedReport({**data, "repros": scrubbed(repros)})


@dataclass(frozen=True)
class CheckReport:
    """The results of one `fullgraph check` run: `target` is what was checked."""

    results: tuple[CheckResult, ...]
    command: str
    target: str
    seconds: float
    env: dict = field(default_factory=environment)

    def to_dict(self) -> dict:
        passed = sum(result.passed for result in self.results)
        data = {
            "schema_version": SCHEMA_VERSION,
            "kind": "check-results",
            "target": self.target,
            "command": self.command,
            "env": dict(self.env),
            "summary": {"passed": passed, "failed": len(self.results) - passed,
                        "seconds": round(self.seconds, 3)},
            "results": [result.to_dict() for result in self.results],
        }
        return scrubbed(data)


def _break_dict(brk: GraphBreak, seen: Watch) -> dict:
    entries, first = seen.transformed_code(brk), seen.first_compile(brk)
    # The frame dynamo was compiling: the function itself, or a resume function of it.
    compiled = entries[0].code.co_name if entries else brk.frames[0].function
    return {**brk.to_dict(), "compile_id": first, "context": _context(brk),
            "compiled_function": compiled,
            **_decompiled(entries, first, resumed_label(compiled))}


def _compile_dict(event: CompileEvent, timing: CompileTiming) -> dict:
    return {"compile_id": event.compile_id, "kind": event.kind,
            "function": event.function.function,
            "filename": display_path(event.function.filename),
            "lineno": event.function.lineno, "recompile": event.recompile,
            "reasons": [f"{failure.entry}: {failure.describe()}" for failure in event.failures],
            "failed_guards": [{"entry": failure.entry, "kind": failure.kind,
                               "source": failure.source} for failure in event.failures],
            "error": event.error, "start": timing.to_dict()["start"],
            "seconds": timing.to_dict()["seconds"]}


# The values after a guard's subject in a compile's reason (GuardFailure.describe).
_GUARD_VALUES = re.compile(r": (?:expected|actual) .*\Z", re.DOTALL)


def failed_guard(reason: str) -> str:
    """The guard a compile's reason (as `_compile_dict` writes it: "0/0: size guard on
    x.size()[0]: expected 4, actual 5") says failed, without its cache entry and values: the one
    cause behind a recompile at each new length. Text without an entry (an error) is cut at its
    first colon."""
    entry, separator, guard = reason.partition(": ")
    if not (separator and entry[:1].isdigit()):
        return reason.split(": ")[0]
    # The subject may hold a colon itself ("global state changed: grad_mode").
    return _GUARD_VALUES.sub("", guard)


def _context(brk: GraphBreak) -> dict | None:
    """The breaking line with CONTEXT_LINES either side, numbered from `start`."""
    frame = brk.location
    lines = linecache.getlines(frame.filename)
    if not lines or not 0 < frame.lineno <= len(lines):
        return None
    start = max(1, frame.lineno - CONTEXT_LINES)
    end = min(len(lines), frame.lineno + CONTEXT_LINES)
    return {"filename": display_path(frame.filename), "lineno": frame.lineno, "start": start,
            "lines": [line.rstrip("\n") for line in lines[start - 1:end]]}


def _decompiled(entries: tuple[TransformedCode, ...], first: str | None, function: str) -> dict:
    """{"decompiled": depyf's Python for the cache entry of the compile `first` that met the break
    (else the most recently used), or None; "decompiled_note": why not, or which entry it is}."""
    if not entries:
        return {"decompiled": None,
                "decompiled_note": f"dynamo holds no compiled code for {function}: its compile did "
                                   f"not finish, or dynamo was reset before the report was written"}
    try:
        import depyf  # optional: the fullgraph[report] extra
    except ImportError:
        return {"decompiled": None,
                "decompiled_note": "depyf is not installed: `pip install depyf` to show the "
                                   "bytecode dynamo produced"}
    shown = entries[0]
    try:
        text = depyf.decompile(shown.code).rstrip()
    except Exception as error:  # a decompiler gap must not cost the rest of the report
        return {"decompiled": None,
                "decompiled_note": f"depyf could not decompile it: {type(error).__name__}: {error}"}
    return {"decompiled": text, "decompiled_note": _entry_note(shown, len(entries), first, function)}


def _entry_note(shown: TransformedCode, count: int, first: str | None, function: str) -> str | None:
    """Which cache entry the decompiled code is, where it could be another."""
    if first is None:
        return None if count == 1 else f"the most recently used of {count} cache entries of {function}"
    if shown.compile_id == first:
        return (None if count == 1 else
                f"the cache entry of compile {first}, which met this break, one of {count} for {function}")
    # Dynamo dropped that entry (an object its guards held was freed): another stands in, and
    # says so.
    return (f"the cache entry of compile {shown.compile_id}, the most recently used of {count} for "
            f"{function}: compile {first} met this break, and dynamo no longer holds its entry")


def _sources(breaks: tuple[GraphBreak, ...]) -> list[dict]:
    """The source of each function a break happened in, once each. An installed package's is left
    out: its version, in the environment block, says what the code is."""
    sources, seen = [], set()
    for brk in breaks:
        frame = brk.location
        if installed_package(frame.filename) is not None:
            continue
        found = _function_source(frame.filename, frame.lineno, frame.function)
        if found is None or (frame.filename, found[0]) in seen:
            continue
        seen.add((frame.filename, found[0]))
        sources.append({"filename": display_path(frame.filename), "function": frame.function,
                        "lineno": found[0], "source": found[1]})
    return sources


def _function_source(filename: str, lineno: int, name: str) -> tuple[int, str] | None:
    """(first line, text) of the innermost function `name` around `lineno`, decorators included."""
    lines = linecache.getlines(filename)
    try:
        tree = ast.parse("".join(lines))
    except (SyntaxError, ValueError):
        return None
    found = None
    for node in ast.walk(tree):
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
                and node.lineno <= lineno <= (node.end_lineno or node.lineno)
                and (found is None or node.lineno > found.lineno)):
            found = node
    if found is None:
        return None
    start = min([found.lineno] + [decorator.lineno for decorator in found.decorator_list])
    return start, "".join(lines[start - 1:found.end_lineno]).rstrip("\n")


# -- writing ----------------------------------------------------------------------------------

_RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html}


def render(report: Report | CheckReport, format: str = "md") -> str:
    """The report as text in one of FORMATS."""
    if format not in _RENDERERS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    return _RENDERERS[format](report)


def format_for_path(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write `path` in: `format` if given, else from the extension."""
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    found = _EXTENSIONS.get(Path(path).suffix.lower())
    if found is None:
        raise ValueError(f"path: cannot tell the format of {os.fspath(path)!r} from its extension; "
                         f"use .md, .json or .html, or give the format")
    return found


def write_report(report: Report | CheckReport, path: str | os.PathLike, format: str | None = None
                 ) -> Path:
    """Write the report to `path` as Markdown, JSON or HTML (from the extension unless `format`
    says); return the path."""
    text = render(report, format_for_path(path, format))
    target = Path(path)
    target.write_text(text, encoding="utf-8")
    return target
