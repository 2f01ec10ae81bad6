"""The compile report's data laid out as text: Markdown to paste into an issue, one
self-contained HTML page, and JSON.

Each renderer reads only the dict a report's `to_dict()` returns (docs/report-format.md), never
the Watch behind it, so a RecordedReport made in another process renders the same as a Report.
fullgraph.checks.report holds the reports and writes them, and is where these are imported from.
"""

from __future__ import annotations

import html
import json
import re
from typing import TYPE_CHECKING, Any

from ._compat import breaks as torch_breaks
from ._message import counted
from .repro_markdown import intro, label, reduced, repros_markdown, verified_shortest_first

if TYPE_CHECKING:
    from .report import CheckReport, Report

__all__ = ["render_markdown", "render_json", "render_html", "resumed_label"]

MET_IN_SHOWN = 5  # tests named under a graph break in a test run's report; the others are counted


def render_json(report: Report | CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


def render_markdown(report: Report | CheckReport) -> str:
    """GitHub-flavoured Markdown, ready to paste into an issue."""
    data = report.to_dict()
    if data["kind"] == "check-results":
        return _check_markdown(data)
    return _compile_markdown(data)


def render_html(report: Report | CheckReport) -> str:
    """One self-contained page: inline CSS, no scripts, no external assets."""
    data = report.to_dict()
    if data["kind"] == "check-results":
        body = _check_html(data)
    else:
        body = _compile_html(data)
    return _HTML_PAGE.format(title=html.escape(_title(data)), css=_CSS, body=body)


# -- shared wording ---------------------------------------------------------------------------

def _title(data: dict) -> str:
    summary = data["summary"]
    if data["kind"] == "check-results":
        return (f"fullgraph check: {summary['passed']} passed, {summary['failed']} failed "
                f"({data['target']})")
    parts = []
    if summary["graph_breaks"]:
        parts.append(counted(summary["graph_breaks"], "graph break"))
    if summary["recompiles"]:
        parts.append(counted(summary["recompiles"], "recompile"))
    if summary["limit_hits"]:
        parts.append("recompile limit hit")
    if summary["cudagraph_skips"]:
        parts.append("CUDA graphs skipped")
    found = ", ".join(parts) if parts else "no graph breaks or recompiles"
    return f"torch.compile: {found} in {data['target']}"


# A pytest run's report (_run_report.RunReport) adds "tests", each break's "tests" and each
# compile's "test"; a program's report has none of them, and renders as if none of this existed.
#
# A run of hundreds of tests mostly has a handful that broke the graph or recompiled, and those are
# what a reader acts on: they are the table, most first (sorted, so a run under xdist reads the
# same twice), and the clean ones are one line under it. Listing every test would bury them, and
# the JSON has every test's counts.
def _tests_table(tests: dict[str, dict]) -> tuple[list[str], list[tuple[str, list[int]]], str]:
    """The count columns, a row for each test with a count above 0, and a line about the rest."""
    names = list(dict.fromkeys(name for counts in tests.values() for name in counts))
    labels = [name.replace("_", " ") for name in names]
    rows = [(nodeid, [counts.get(name, 0) for name in names]) for nodeid, counts in tests.items()]
    listed = sorted((row for row in rows if any(row[1])),
                    key=lambda row: ([-count for count in row[1]], row[0]))
    clean = len(rows) - len(listed)
    none = " and ".join(f"no {label}" for label in labels)
    if not clean:
        return labels, listed, "" if listed else "No test was watched."
    if not listed:
        return labels, [], f"{counted(clean, 'test')} watched: {none}."
    return labels, listed, f"Not listed: {counted(clean, 'test')} with {none}."


def _met_in(tests: list[str]) -> tuple[list[str], str]:
    """The first MET_IN_SHOWN tests that met a break, and "and N more" for the others."""
    more = len(tests) - MET_IN_SHOWN
    return tests[:MET_IN_SHOWN], f" and {more} more" if more > 0 else ""


def _env_lines(data: dict) -> list[str]:
    env = data["env"]
    rows = [("torch", env.get("torch")), ("Python", env.get("python")),
            ("OS", env.get("platform")), ("CUDA", env.get("cuda")), ("GPU", env.get("gpu"))]
    # The installed packages whose code the report names, at the version it ran.
    rows += list(data.get("packages", {}).items())
    if "dynamo_config" in data:
        changed = data["dynamo_config"]
        rows += [(f"torch._dynamo.config.{key}", repr(value)) for key, value in changed.items()]
        rows += [] if changed else [("dynamo config", "defaults")]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value if value is not None else '-'}" for name, value in rows]


def _summary_rows(data: dict) -> list[tuple[str, str]]:
    summary, exit_ = data["summary"], data["exit"]
    ended = exit_["status"] + (f" ({exit_['exception']})" if exit_["exception"] else "")
    return [("command", data["command"]), ("ended", ended),
            ("graphs", str(summary["graph_count"])),
            ("graph breaks", f"{summary['graph_breaks']} distinct"),
            ("compiles", f"{summary['compiles']} ({summary['compile_seconds']:.2f} s)"),
            ("recompiles", str(summary["recompiles"])),
            ("recompile-limit hits", str(summary["limit_hits"])),
            ("CUDA-graph skips", str(summary["cudagraph_skips"]))]


def _stack_heading(crash: dict) -> str:
    return f"Python stack {crash['stack_taken']}"


def _stack_text(crash: dict) -> str:
    return _fence(crash["stack"]) if crash["stack"] else "None was written."


def _function_label(compile_: dict) -> str:
    return resumed_label(compile_["function"])


def _compiled_label(brk: dict) -> str:
    return resumed_label(brk["compiled_function"])


def resumed_label(code_name: str) -> str:
    """`f (resumed)` for dynamo's resume function `torch_dynamo_resume_in_f_at_12`."""
    name = torch_breaks.remove_resume_prefix(code_name)
    return f"{name} (resumed)" if name != code_name else name


def _break_heading(number: int, brk: dict) -> str:
    gb_id = f" ({brk['gb_id']})" if brk["gb_id"] else ""
    deliberate = ", torch.compiler.disable'd, not counted" if brk["disabled"] else ""
    return f"{number}. {brk['gb_type']}{gb_id}: {counted(brk['count'], 'time')}{deliberate}"


def _where(brk: dict) -> list[str]:
    """`path:line in function` of the breaking line, then of each caller, innermost first."""
    return [f"{frame['filename']}:{frame['lineno']} in {frame['function']}"
            for frame in reversed(brk["frames"])]


def _context_text(context: dict) -> str:
    width = len(str(context["start"] + len(context["lines"]) - 1))
    return "\n".join(f"{'>' if number == context['lineno'] else ' '} {number:>{width}}  {line}".rstrip()
                     for number, line in enumerate(context["lines"], start=context["start"]))


# -- Markdown ---------------------------------------------------------------------------------

def _longest_backticks(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _fence(text: str, language: str = "") -> str:
    # A fence longer than any run of backticks inside, so code containing ``` cannot close it.
    fence = "`" * max(3, _longest_backticks(text) + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _code(text: str) -> str:
    """Inline code that no backtick inside can end (a test id's parameters may hold some)."""
    ticks = "`" * (_longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _compile_markdown(data: dict) -> str:
    out = [f"**Suggested issue title:** {_title(data)}", "",
           "## Environment", "", _fence("\n".join(_env_lines(data))), "",
           "## Summary", "", "| | |", "|---|---|"]
    out += [f"| {name} | {f'`{value}`' if name == 'command' else _cell(value)} |"
            for name, value in _summary_rows(data)]
    out.append("")
    if data.get("crash"):
        out += [f"## {_stack_heading(data['crash'])}", "", _stack_text(data["crash"]), ""]
    if "tests" in data:
        out += _tests_markdown(data["tests"])
    out += ["## Graph breaks", ""]
    if not data["graph_breaks"]:
        out += ["None.", ""]
    for number, brk in enumerate(data["graph_breaks"], start=1):
        out += _break_markdown(number, brk)
    out += ["## Recompiles", ""]
    out += _recompiles_markdown(data["compiles"])
    if data["cudagraph_skips"]:
        out += ["## CUDA-graph skips", ""]
        # inductor's messages carry the user stack that caused them, over several lines.
        for message in data["cudagraph_skips"]:
            out += [_fence(message.rstrip()), ""]
    out += _reproduction_markdown(data)
    return "\n".join(out).rstrip() + "\n"


def _tests_markdown(tests: dict[str, dict]) -> list[str]:
    labels, rows, rest = _tests_table(tests)
    out = ["## Tests", ""]
    if rows:
        out += ["| test | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
        out += [f"| {_cell(_code(nodeid))} | " + " | ".join(map(str, counts)) + " |"
                for nodeid, counts in rows]
        out.append("")
    return out + ([rest, ""] if rest else [])


def _break_markdown(number: int, brk: dict) -> list[str]:
    where = _where(brk)
    out = [f"### {_break_heading(number, brk)}", "", f"- `{where[0]}`"]
    out += [f"- called from `{caller}`" for caller in where[1:]]
    out.append("")
    if "tests" in brk:
        shown, more = _met_in(brk["tests"])
        out += [f"Met in: {', '.join(_code(nodeid) for nodeid in shown)}{more}.", ""]
    if brk["context"]:
        out += [_fence(_context_text(brk["context"]), "python"), ""]
    if brk["caused_by"]:
        out += [f"Caused by: {brk['caused_by']}", ""]
    if brk["explanation"]:
        out += [brk["explanation"], ""]
    if brk["hints"]:
        out += [f"- Hint: {hint}" for hint in brk["hints"]] + [""]
    if brk["url"]:
        out.append(f"[{brk['gb_id'] or 'torch'} documentation]({brk['url']})")
    out += ["", "<details><summary>Bytecode dynamo produced for "
                f"{_compiled_label(brk)}, decompiled by depyf</summary>", ""]
    if brk["decompiled"] and brk["decompiled_note"]:
        out += [f"{brk['decompiled_note'].capitalize()}:", ""]
    out += [_fence(brk["decompiled"], "python") if brk["decompiled"] else brk["decompiled_note"]]
    out += ["", "</details>", ""]
    return out


def _recompiles_markdown(compiles: list[dict]) -> list[str]:
    recompiles = [compile_ for compile_ in compiles if compile_["recompile"]]
    if not recompiles:
        return ["None.", ""]
    # Compile ids start again in each test that resets dynamo: in a test run the test tells them
    # apart.
    tested = any("test" in compile_ for compile_ in recompiles)
    columns = ["compile", *(["test"] if tested else []), "function", "why"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for compile_ in recompiles:
        why = _why(compile_)
        test = f" {_cell(_code(compile_['test']))} |" if tested else ""
        out.append(f"| {compile_['compile_id']} |{test} `{_function_label(compile_)}` "
                   f"({compile_['filename']}:{compile_['lineno']}) | {_cell(why)} |")
    return out + [""]


def _why(compile_: dict) -> str:
    """The failed guard of the cache entry used last (the others usually fail the same way), and
    the error of a refused compile."""
    reasons = compile_["reasons"]
    why = reasons[0] if reasons else "-"
    if len(reasons) > 1:
        others = len(reasons) - 1
        why += f" ({counted(others, 'other entry', 'other entries')} failed too)"
    if compile_["error"]:
        why += f" ({compile_['error']})"
    return why


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _reproduction_markdown(data: dict) -> list[str]:
    out = ["## Reproduction", "", _fence(data["reproduction"]["command"], "sh"), ""]
    sources = data["reproduction"]["sources"]
    if sources:
        out += ["The functions that broke:", ""]
    for source in sources:
        out += [f"`{source['filename']}:{source['lineno']}` {source['function']}", "",
                _fence(source["source"], "python"), ""]
    if data["repros"] is not None:
        out += repros_markdown(data["repros"], _fence)
    return out


def _check_markdown(data: dict) -> str:
    out = [f"# {_title(data)}", "", "## Environment", "", _fence("\n".join(_env_lines(data))), "",
           "## Results", "", f"`{data['command']}` in {data['summary']['seconds']:.1f} s", "",
           "| check | result | detail | time |", "|---|---|---|---|"]
    out += [f"| {_cell(r['name'])} | {'pass' if r['passed'] else '**FAIL**'} | {_cell(r['detail'])} "
            f"| {r['seconds']:.1f} s |" for r in data["results"]]
    out.append("")
    for result in data["results"]:
        if not result["passed"]:
            out += [f"### {result['name']}", "", _fence(result["message"]), ""]
    return "\n".join(out).rstrip() + "\n"


# -- HTML -------------------------------------------------------------------------------------

_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em;
       color: #1f2328; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
code { font-family: ui-monospace, monospace; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #d0d7de; padding: .2em .6em; text-align: left; vertical-align: top; }
.fail { color: #cf222e; font-weight: bold; }
.hit { background: #fff8c5; display: block; }
.timeline { margin: .5em 0; }
.row { display: flex; align-items: center; gap: .6em; font-size: 13px; }
.label { width: 22em; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.track { flex: 1; position: relative; height: 1em; background: #f6f8fa; }
.bar { position: absolute; top: 0; height: 100%; min-width: 2px; background: #0969da; }
.bar.recompile { background: #bf8700; }
.bar.recompile_limit { background: #cf222e; }
.secs { width: 5em; text-align: right; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>"
                               for name, value in rows) + "</table>"


def _compile_html(data: dict) -> str:
    summary = [(_e(name), _e(value)) for name, value in _summary_rows(data)]
    parts = [f"<h1>{_e(_title(data))}</h1>",
             "<h2>Environment</h2>", f"<pre>{_e(chr(10).join(_env_lines(data)))}</pre>",
             "<h2>Summary</h2>", _table(summary)]
    if data.get("crash"):
        crash = data["crash"]
        parts += [f"<h2>{_e(_stack_heading(crash))}</h2>",
                  f"<pre>{_e(crash['stack'])}</pre>" if crash["stack"] else "<p>None was written.</p>"]
    if "tests" in data:
        parts += ["<h2>Tests</h2>", _tests_html(data["tests"])]
    parts.append("<h2>Graph breaks</h2>")
    parts += [_break_html(number, brk) for number, brk in enumerate(data["graph_breaks"], start=1)]
    if not data["graph_breaks"]:
        parts.append("<p>None.</p>")
    parts += ["<h2>Recompiles</h2>", _recompiles_html(data["compiles"]),
              "<h2>Timeline of compiles</h2>", _timeline_html(data["compiles"])]
    if data["cudagraph_skips"]:
        parts.append("<h2>CUDA-graph skips</h2>")
        parts += [f"<pre>{_e(message.rstrip())}</pre>" for message in data["cudagraph_skips"]]
    parts += ["<h2>Reproduction</h2>", f"<pre><code>{_e(data['reproduction']['command'])}</code></pre>"]
    for source in data["reproduction"]["sources"]:
        parts += [f"<p><code>{_e(source['filename'])}:{source['lineno']}</code> "
                  f"{_e(source['function'])}</p>", f"<pre><code>{_e(source['source'])}</code></pre>"]
    if data["repros"] is not None:
        parts.append(_repros_html(data["repros"]))
    return "\n".join(parts)


def _repros_html(repros: list[dict]) -> str:
    """The Markdown's "Standalone repros", with every verified script: a page has the room an
    issue body has not."""
    parts = ["<h3>Standalone repros</h3>", f"<p>{_e(intro(repros))}</p>"]
    verified = verified_shortest_first(repros)
    for repro in verified:
        parts += [f'<section class="repro"><h4>{_e(label(repro))}: <code>{_e(repro["file"])}</code>'
                  f"</h4>", f"<p>{_e(reduced(repro))}</p>",
                  f"<pre><code>{_e(repro['script'].rstrip(chr(10)))}</code></pre></section>"]
    rest = [repro for repro in repros if repro not in verified]
    if rest:
        items = "".join(
            f"<li>{_e(label(repro))}, "
            + (f"<code>{_e(repro['file'])}</code>" if repro["file"] else "no script")
            + f": {_e(repro['status'])}" + (f"<pre>{_e(repro['why'])}</pre>" if repro["why"] else "")
            + "</li>" for repro in rest)
        parts.append(f"<p>Without a verified script:</p><ul>{items}</ul>")
    return "\n".join(parts)


def _tests_html(tests: dict[str, dict]) -> str:
    labels, rows, rest = _tests_table(tests)
    parts = []
    if rows:
        head = "".join(f"<th>{_e(label)}</th>" for label in labels)
        body = "".join(f"<tr><td><code>{_e(nodeid)}</code></td>"
                       + "".join(f"<td>{count}</td>" for count in counts) + "</tr>"
                       for nodeid, counts in rows)
        parts.append(f"<table><tr><th>test</th>{head}</tr>{body}</table>")
    if rest:
        parts.append(f"<p>{_e(rest)}</p>")
    return "\n".join(parts)


def _break_html(number: int, brk: dict) -> str:
    where = _where(brk)
    parts = [f'<section class="break"><h3>{_e(_break_heading(number, brk))}</h3>',
             f"<p><code>{_e(where[0])}</code>"]
    parts += [f"<br>called from <code>{_e(caller)}</code>" for caller in where[1:]]
    parts.append("</p>")
    if "tests" in brk:
        shown, more = _met_in(brk["tests"])
        names = ", ".join(f"<code>{_e(nodeid)}</code>" for nodeid in shown)
        parts.append(f"<p>Met in: {names}{_e(more)}.</p>")
    if brk["context"]:
        context = brk["context"]
        lines = _context_text(context).splitlines()
        hit = context["lineno"] - context["start"]
        lines = [f'<span class="hit">{_e(line)}</span>' if index == hit else _e(line)
                 for index, line in enumerate(lines)]
        parts.append("<pre><code>" + "\n".join(lines) + "</code></pre>")
    if brk["caused_by"]:
        parts.append(f"<p>Caused by: {_e(brk['caused_by'])}</p>")
    if brk["explanation"]:
        parts.append(f"<p>{_e(brk['explanation'])}</p>")
    parts += [f"<p>Hint: {_e(hint)}</p>" for hint in brk["hints"]]
    if brk["url"]:
        parts.append(f'<p><a href="{_e(brk["url"])}">{_e(brk["gb_id"] or "torch")} documentation</a></p>')
    body = "".join([f"<p>{_e(brk['decompiled_note'].capitalize())}:</p>"
                    if brk["decompiled"] and brk["decompiled_note"] else "",
                    f"<pre><code>{_e(brk['decompiled'])}</code></pre>" if brk["decompiled"]
                    else f"<p>{_e(brk['decompiled_note'])}</p>"])
    parts.append(f"<details><summary>Bytecode dynamo produced for {_e(_compiled_label(brk))}"
                 f", decompiled by depyf</summary>{body}</details></section>")
    return "\n".join(parts)


def _recompiles_html(compiles: list[dict]) -> str:
    recompiles = [compile_ for compile_ in compiles if compile_["recompile"]]
    if not recompiles:
        return "<p>None.</p>"
    tested = any("test" in c for c in recompiles)
    rows = "".join(
        f"<tr><td>{_e(c['compile_id'])}</td>"
        + (f"<td><code>{_e(c['test'])}</code></td>" if tested else "")
        + f"<td><code>{_e(_function_label(c))}</code> {_e(c['filename'])}:{c['lineno']}</td>"
        f"<td>{_e(_why(c))}</td></tr>"
        for c in recompiles)
    test = "<th>test</th>" if tested else ""
    return f"<table><tr><th>compile</th>{test}<th>function</th><th>why</th></tr>{rows}</table>"


def _timeline_html(compiles: list[dict]) -> str:
    """One bar per compile, by start time, on a scale from the block's start to the last end."""
    timed = sorted((c for c in compiles if c["start"] is not None),
                   key=lambda c: c["start"])
    if not timed:
        return "<p>No compiles.</p>"
    span = max(c["start"] + (c["seconds"] or 0.0) for c in timed) or 1.0
    rows = []
    for c in timed:
        left, width = 100 * c["start"] / span, 100 * (c["seconds"] or 0.0) / span
        label = f"{c['compile_id']} {c['kind']}: {_function_label(c)}"
        label += f" in {c['test']}" if "test" in c else ""
        seconds = "-" if c["seconds"] is None else f"{c['seconds']:.3f} s"
        rows.append(f'<div class="row"><span class="label" title="{_e(label)}">{_e(label)}</span>'
                    f'<span class="track"><span class="bar {_e(c["kind"])}" '
                    f'style="left:{left:.2f}%;width:{width:.2f}%"></span></span>'
                    f'<span class="secs">{seconds}</span></div>')
    return f'<div class="timeline">{"".join(rows)}</div>'


def _check_html(data: dict) -> str:
    rows = "".join(
        f"<tr><td>{_e(r['name'])}</td>"
        f"<td>{'pass' if r['passed'] else '<span class=fail>FAIL</span>'}</td>"
        f"<td>{_e(r['detail'])}</td><td>{r['seconds']:.1f} s</td></tr>" for r in data["results"])
    parts = [f"<h1>{_e(_title(data))}</h1>", "<h2>Environment</h2>",
             f"<pre>{_e(chr(10).join(_env_lines(data)))}</pre>", "<h2>Results</h2>",
             f"<p><code>{_e(data['command'])}</code> in {data['summary']['seconds']:.1f} s</p>",
             f"<table><tr><th>check</th><th>result</th><th>detail</th><th>time</th></tr>{rows}</table>"]
    for result in data["results"]:
        if not result["passed"]:
            parts += [f"<h3>{_e(result['name'])}</h3>", f"<pre>{_e(result['message'])}</pre>"]
    return "\n".join(parts)
