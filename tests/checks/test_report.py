import json
import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch

import zoo
from fullgraph.checks._report_data import local_path, scrubbed
from fullgraph.checks.env import packages_of, site_dirs
from fullgraph.checks.recompiles import GuardFailure
from fullgraph.checks.report import (
    SCHEMA_VERSION,
    CheckReport,
    RecordedReport,
    Report,
    failed_guard,
    format_for_path,
    render,
    render_html,
    render_json,
    render_markdown,
    write_report,
)
from fullgraph.checks.suite import CheckResult
from fullgraph.checks.watch import watch

ZOO = os.path.relpath(zoo.__file__)
DOCS = "https://meta-pytorch.github.io/compile-graph-break-site/"
BUILTIN = "Failed to trace builtin operator"


@pytest.fixture(scope="module")
def report():
    """Two functions: one breaks in a helper and recompiles, one reads .item()."""
    torch._dynamo.reset()
    helpers = torch.compile(zoo.calls_helpers, backend="eager", dynamic=False)
    item = torch.compile(zoo.reads_item, backend="eager")
    with watch() as seen:
        for size in (2, 3):
            helpers(torch.ones(size))
        item(torch.ones(2))
    # Paths of this machine in the command: the report must not repeat them.
    command = f"python {os.getcwd()}/train.py --data {os.path.expanduser('~')}/data"
    yield Report(seen, command=command, target="train.py")
    torch._dynamo.reset()


def test_json_has_the_versioned_schema(report):
    data = json.loads(render_json(report))

    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == "compile-report"
    assert set(data["env"]) >= {"torch", "python", "platform", "cuda", "gpu"}
    assert data["env"]["torch"] == torch.__version__
    assert data["exit"] == {"status": "ok", "exception": None}
    assert data["summary"]["graph_breaks"] == 2 and data["summary"]["recompiles"] >= 3
    assert data["summary"]["graph_count"] == report.watch.graph_count
    helper, scalar = data["graph_breaks"]
    assert {"gb_type", "gb_id", "reason", "explanation", "hints", "frames", "count"} <= set(helper)
    assert helper["count"] == 2 and scalar["count"] == 1 and helper["gb_id"].startswith("GB")
    assert [(f["function"], f["lineno"]) for f in helper["frames"]] == [
        ("calls_helpers", zoo.line_of("outer call")), ("_scale_and_log", zoo.line_of("middle call")),
        ("_log", zoo.line_of("helper"))]
    assert helper["frames"][-1] == {"filename": ZOO, "lineno": zoo.line_of("helper"),
                                    "function": "_log",
                                    "line": 'print("log", x.shape)  # break: helper'}
    first = data["compiles"][0]
    recompile = next(compile_ for compile_ in data["compiles"] if compile_["recompile"])
    assert {"compile_id", "function", "filename", "lineno", "recompile", "reasons"} <= set(first)
    assert first["function"] == "calls_helpers" and first["recompile"] is False
    assert first["filename"] == ZOO and first["seconds"] > 0
    assert recompile["recompile"] and "size guard on x.size()[0]: expected 2, actual 3" in recompile["reasons"][0]
    # The same guards as data, one per reason: what --repro compares a script's recompile with.
    assert len(recompile["failed_guards"]) == len(recompile["reasons"])
    assert recompile["failed_guards"][0] == {"entry": recompile["reasons"][0].split(":")[0],
                                             "kind": "size", "source": "x.size()[0]"}
    assert first["failed_guards"] == []


def test_markdown_is_an_issue_body(report):
    text = render_markdown(report)
    title, _, rest = text.partition("\n")

    assert title == "**Suggested issue title:** torch.compile: 2 graph breaks, " \
                    f"{report.to_dict()['summary']['recompiles']} recompiles in train.py"
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections == ["Environment", "Summary", "Graph breaks", "Recompiles", "Reproduction"]
    # A program's report names no tests: those are a test run's (test_a_test_runs_report_...).
    assert "Met in:" not in text and "| compile | function | why |" in text
    assert f"torch          {torch.__version__}" in text and "dynamo config  defaults" in text
    assert "| graph breaks | 2 distinct |" in text
    # Each distinct break once, with its count.
    assert re.findall(r"^### \d\. (.+)$", text, re.M) == [
        f"{BUILTIN} (GB0059): 2 times",
        "Unsupported Tensor.item() call with capture_scalar_outputs=False (GB0124): 1 time"]
    helper = zoo.line_of("helper")
    assert (f"- `{ZOO}:{helper} in _log`\n"
            f"- called from `{ZOO}:{zoo.line_of('middle call')} in _scale_and_log`\n"
            f"- called from `{ZOO}:{zoo.line_of('outer call')} in calls_helpers`\n") in text
    assert f"> {helper}      print(\"log\", x.shape)  # break: helper" in text  # the line, marked
    assert f"  {helper - 1}  def _log(x):" in text and f"  {helper + 1}      return x + 1" in text
    assert "- Hint: Avoid calling builtin `print`" in text
    assert f"[GB0059 documentation]({DOCS}gb/gb0059.html)" in text
    assert "<details><summary>Bytecode dynamo produced for calls_helpers, decompiled by depyf" in text
    assert "def calls_helpers(x):" in text and "__resume_at_" in text
    assert "size guard on x.size()[0]: expected 2, actual 3" in text
    reproduction = text[text.index("## Reproduction"):]
    assert "```sh\npython ./train.py --data ~/data\n```" in reproduction
    assert f"`{ZOO}:{helper - 1}` _log\n\n```python\ndef _log(x):\n" in reproduction



def test_html_is_self_contained_with_a_timeline(report):
    page = render_html(report)

    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page)
    assert links and all(link.startswith(DOCS) for link in links)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    bars = re.findall(r'<span class="bar (\w+)" style="left:([\d.]+)%;width:([\d.]+)%">', page)
    assert len(bars) == len(report.watch.compiles)
    kinds = [kind for kind, _, _ in bars]
    assert kinds[:2] == ["compile", "compile"] and "recompile" in kinds
    assert [float(left) for _, left, _ in bars] == sorted(float(left) for _, left, _ in bars)
    for heading in ("Environment", "Summary", "Graph breaks", "Recompiles", "Timeline of compiles",
                    "Reproduction"):
        assert f"<h2>{heading}</h2>" in page
    assert "<details><summary>Bytecode dynamo produced for calls_helpers" in page
    assert "<h2>Tests</h2>" not in page and "Met in:" not in page and "<th>test</th>" not in page


PIPE, TICK, TAG = "test_m.py::test_pipe[a|b]", "test_m.py::test_tick[`x`]", "test_m.py::test_tag[<b>]"


@pytest.fixture
def run_report(report):
    """The report as _run_report.RunReport would give it for a run of ten tests: seven met the
    helper's break, one recompiled, and the ids hold a pipe, backticks and a tag."""
    data = report.to_dict()
    met = [PIPE, TICK, *(f"test_m.py::test_{n}" for n in range(4)), TAG]
    data["tests"] = {nodeid: {"graph_breaks": 1, "recompiles": 0} for nodeid in met}
    data["tests"] |= {PIPE: {"graph_breaks": 2, "recompiles": 1},
                      "test_m.py::test_scalar": {"graph_breaks": 1, "recompiles": 0},
                      "test_m.py::test_clean": {"graph_breaks": 0, "recompiles": 0},
                      "test_m.py::test_also_clean": {"graph_breaks": 0, "recompiles": 0}}
    helper, scalar = data["graph_breaks"]
    helper["tests"], scalar["tests"] = met, ["test_m.py::test_scalar"]
    for compile_ in data["compiles"]:
        compile_["test"] = PIPE if compile_["recompile"] else "test_m.py::test_0"
    return SimpleNamespace(to_dict=lambda: data)


def test_a_test_runs_report_says_which_test_did_what_in_markdown(run_report):
    text = render_markdown(run_report)

    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections == ["Environment", "Summary", "Tests", "Graph breaks", "Recompiles", "Reproduction"]
    tests = text[text.index("## Tests"):text.index("## Graph breaks")]
    # Most graph breaks first, then by id; a pipe escaped, backticks inside a longer run of them.
    assert tests.splitlines()[2:] == [
        "| test | graph breaks | recompiles |", "|---|---:|---:|",
        "| `test_m.py::test_pipe[a\\|b]` | 2 | 1 |",
        "| `test_m.py::test_0` | 1 | 0 |", "| `test_m.py::test_1` | 1 | 0 |",
        "| `test_m.py::test_2` | 1 | 0 |", "| `test_m.py::test_3` | 1 | 0 |",
        "| `test_m.py::test_scalar` | 1 | 0 |", "| `test_m.py::test_tag[<b>]` | 1 | 0 |",
        "| ``test_m.py::test_tick[`x`]`` | 1 | 0 |", "",
        "Not listed: 2 tests with no graph breaks and no recompiles.", ""]
    helper, scalar = text[:text.index("## Recompiles")].split("\n### ")[1:]
    assert ("Met in: `test_m.py::test_pipe[a|b]`, ``test_m.py::test_tick[`x`]``, `test_m.py::test_0`, "
            "`test_m.py::test_1`, `test_m.py::test_2` and 2 more.") in helper
    assert "Met in: `test_m.py::test_scalar`." in scalar and "test_pipe" not in scalar
    recompiles = text[text.index("## Recompiles"):text.index("## Reproduction")]
    assert "| compile | test | function | why |" in recompiles
    rows = [line for line in recompiles.splitlines() if line.startswith("| 0/")]
    assert rows and all(row.split(" | ")[1] == "`test_m.py::test_pipe[a\\|b]`" for row in rows)


def test_a_test_runs_report_says_which_test_did_what_in_html(run_report):
    page = render_html(run_report)

    assert "<b>" not in page and "test_tag[&lt;b&gt;]" in page
    tests = page[page.index("<h2>Tests</h2>"):page.index("<h2>Graph breaks</h2>")]
    assert re.findall(r"<tr><td><code>(.+?)</code></td><td>(\d)</td><td>(\d)</td></tr>", tests) == [
        ("test_m.py::test_pipe[a|b]", "2", "1"), *((f"test_m.py::test_{n}", "1", "0") for n in range(4)),
        ("test_m.py::test_scalar", "1", "0"), ("test_m.py::test_tag[&lt;b&gt;]", "1", "0"),
        ("test_m.py::test_tick[`x`]", "1", "0")]
    assert "<p>Not listed: 2 tests with no graph breaks and no recompiles.</p>" in tests
    helper, scalar = page[:page.index("<h2>Recompiles</h2>")].split('<section class="break">')[1:]
    assert ("<p>Met in: <code>test_m.py::test_pipe[a|b]</code>, <code>test_m.py::test_tick[`x`]</code>, "
            "<code>test_m.py::test_0</code>, <code>test_m.py::test_1</code>, "
            "<code>test_m.py::test_2</code> and 2 more.</p>") in helper
    assert "<p>Met in: <code>test_m.py::test_scalar</code>.</p>" in scalar
    recompiles = page[page.index("<h2>Recompiles</h2>"):page.index("<h2>Timeline of compiles</h2>")]
    assert "<th>compile</th><th>test</th><th>function</th>" in recompiles
    assert recompiles.count("<td><code>test_m.py::test_pipe[a|b]</code></td>") == \
        run_report.to_dict()["summary"]["recompiles"]
    labels = re.findall(r'<span class="label" title="([^"]+)">', page)
    assert labels[0] == "0/0 compile: calls_helpers in test_m.py::test_0"
    assert any(label.endswith("recompile: calls_helpers in test_m.py::test_pipe[a|b]") for label in labels)


@pytest.mark.parametrize("tests, line", [
    ({"t.py::a": {"graph_breaks": 0, "recompiles": 0}, "t.py::b": {"graph_breaks": 0, "recompiles": 0}},
     "2 tests watched: no graph breaks and no recompiles."),
    ({}, "No test was watched."),
])
def test_a_clean_test_run_says_so_in_one_line(tests, line):
    with watch() as seen:
        pass
    data = {**Report(seen, command="pytest").to_dict(), "tests": tests}
    run_report = SimpleNamespace(to_dict=lambda: data)
    assert f"## Tests\n\n{line}\n\n## Graph breaks" in render_markdown(run_report)
    assert f"<h2>Tests</h2>\n<p>{line}</p>\n<h2>Graph breaks</h2>" in render_html(run_report)


def test_installed_packages_are_written_as_site_packages_and_named_with_their_version():
    transformers = pytest.importorskip("transformers")
    for directory in site_dirs():
        assert scrubbed(os.path.join(directory, "pkg", "mod.py")) == "<site-packages>/pkg/mod.py"
    # torch's own file is `<torch>` and its version is the environment's: not listed again.
    assert scrubbed(torch.__file__) == "<torch>/__init__.py"
    assert packages_of([transformers.__file__, torch.__file__, __file__, "train.py"]) == {
        "transformers": transformers.__version__}


def test_a_path_a_report_shortened_is_found_again_on_this_machine():
    # What --repro does with a report's frames: match them with the functions it recorded.
    transformers = pytest.importorskip("transformers")
    home = os.path.join(os.path.expanduser("~"), "project", "train.py")
    for path in (transformers.__file__, torch.__file__, home, os.path.join(os.getcwd(), "a.py")):
        assert local_path(scrubbed(path)) == os.path.normpath(path)


def test_the_environment_block_lists_the_packages_a_report_names(report):
    data = report.to_dict()
    assert data["packages"] == {}  # the zoo is this repository's code, not installed
    named = RecordedReport({**data, "packages": {"transformers": "5.0.0"}})
    assert "GPU            -\ntransformers   5.0.0\n" in render_markdown(named)
    assert "transformers   5.0.0" in render_html(named)


def test_a_test_runs_report_lists_the_packages_of_every_test(report):
    from fullgraph.checks._run_report import RunReport

    def record(packages):
        return {"report": {**report.to_dict(), "packages": packages}, "started": 0.0,
                "graph_breaks": 2, "recompiles": 1}

    run = RunReport({"a.py::test_one": record({"transformers": "5.0.0"}),
                     "a.py::test_two": record({"accelerate": "1.0.0"})}, "pytest", 0)
    assert run.to_dict()["packages"] == {"accelerate": "1.0.0", "transformers": "5.0.0"}


@pytest.mark.parametrize("render_as", [render_markdown, render_json, render_html])
def test_nothing_about_the_machine_leaks(report, render_as):
    text = render_as(report)
    assert os.getcwd() not in text and os.path.expanduser("~") not in text
    assert os.path.dirname(torch.__file__) not in text


def test_the_bytecode_shown_is_from_the_compile_that_met_the_break(report, monkeypatch):
    helper = report.to_dict()["graph_breaks"][0]
    first = report.watch.compiles[0].compile_id
    assert helper["compile_id"] == first and helper["compiled_function"] == "calls_helpers"
    assert helper["decompiled_note"] == (f"the cache entry of compile {first}, which met this "
                                         "break, one of 2 for calls_helpers")
    # Where dynamo has dropped that entry, another stands in and the note says so.
    brk = report.watch.graph_breaks[0]
    held = report.watch.transformed_code(brk)[1:]
    monkeypatch.setattr(report.watch, "transformed_code", lambda _: held)
    note = report.to_dict()["graph_breaks"][0]["decompiled_note"]
    assert note == (f"the cache entry of compile {held[0].compile_id}, the most recently used of 1 "
                    f"for calls_helpers: compile {first} met this break, and dynamo no longer holds "
                    "its entry")


def test_says_when_depyf_is_missing(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "depyf", None)  # makes `import depyf` raise ImportError
    data = report.to_dict()
    assert data["graph_breaks"][0]["decompiled"] is None
    assert data["graph_breaks"][0]["decompiled_note"].startswith("depyf is not installed")
    assert "depyf is not installed: `pip install depyf`" in render_markdown(report)


def test_a_failed_run_says_how_it_ended():
    with watch() as seen:
        pass
    report = Report(seen, command="python boom.py", status="exception", exception="ValueError: boom")
    text = render_markdown(report)
    assert "| ended | exception (ValueError: boom) |" in text
    assert text.startswith("**Suggested issue title:** torch.compile: no graph breaks or recompiles "
                           "in python boom.py")
    assert json.loads(render_json(report))["exit"] == {"status": "exception", "exception": "ValueError: boom"}


def test_write_report_picks_the_format_from_the_extension(report, tmp_path):
    assert json.loads(write_report(report, tmp_path / "r.json").read_text())["schema_version"] == 5
    assert write_report(report, tmp_path / "r.md").read_text().startswith("**Suggested issue title")
    assert write_report(report, tmp_path / "r.htm").read_text().startswith("<!DOCTYPE html>")
    assert write_report(report, tmp_path / "r.txt", format="json").read_text().startswith("{")
    with pytest.raises(ValueError, match=r"^path: cannot tell the format of '.*r\.txt'"):
        write_report(report, tmp_path / "r.txt")
    with pytest.raises(ValueError, match=r"^format must be one of md, json, html, got 'pdf'"):
        format_for_path("r.md", "pdf")


def test_check_results_render_in_every_format():
    results = (CheckResult("graph breaks: decode", True, "1 graph, 0 breaks", 1.25),
               CheckResult("recompiles: decode", False, "decode compiled 3 times (limit 1)", 2.5,
                           message="decode compiled 3 times over 64 positions (limit 1)"))
    checks = CheckReport(results, command="fullgraph check -o r.md", target="tiny on cpu", seconds=3.8)

    text = render(checks, "md")
    assert text.startswith("# fullgraph check: 1 passed, 1 failed (tiny on cpu)")
    assert "| graph breaks: decode | pass | 1 graph, 0 breaks | 1.2 s |" in text
    assert "| recompiles: decode | **FAIL** |" in text
    assert "### recompiles: decode\n\n```\ndecode compiled 3 times over 64 positions (limit 1)" in text
    data = json.loads(render(checks, "json"))
    assert data["kind"] == "check-results" and data["summary"] == {"passed": 1, "failed": 1, "seconds": 3.8}
    assert data["results"][1]["message"].startswith("decode compiled 3 times") and "torch" in data["env"]
    page = render(checks, "html")
    assert "<span class=fail>FAIL</span>" in page and "http" not in page


def test_the_environment_names_dynamo_config_that_differs_from_the_defaults():
    with watch() as seen:
        torch._dynamo.config.recompile_limit = 2
    text = render_markdown(Report(seen, command="python train.py"))
    assert "torch._dynamo.config.recompile_limit  2\n" in text and "dynamo config  defaults" not in text


def test_cudagraph_skips_are_listed_with_the_stack_inductor_gives():
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    message = ("skipping cudagraphs due to mutated inputs (1 instances). Found from : \n"
               '   File "step.py", line 7, in step\n    cache.add_(token)\n')
    with watch() as seen:
        log_cudagraph_skip_and_bump_counter(message)
    report = Report(seen, command="python step.py")
    text = render_markdown(report)
    assert "| CUDA-graph skips | 1 |" in text and "CUDA graphs skipped" in text.splitlines()[0]
    assert f"## CUDA-graph skips\n\n```\n{message.rstrip()}\n```" in text
    assert "<pre>skipping cudagraphs due to mutated inputs" in render_html(report)


def test_a_recompile_cause_is_the_failed_guard_without_its_entry_and_values():
    # --compare and --repro group recompiles by it: each new length is the same cause.
    assert failed_guard("0/0: size guard on x.size()[0]: expected 4, actual 5") == \
        "size guard on x.size()[0]"
    assert failed_guard("1/2: type guard on x") == "type guard on x"
    assert failed_guard("RuntimeError: boom") == "RuntimeError"  # an error, not a reason


@pytest.mark.parametrize("kind, source, expected, actual", [
    ("global_state", "grad_mode", None, None),
    ("global_state", "default_dtype", "torch.float32", "torch.float64"),
    ("dtype", "x.dtype", "Float", None),
])
def test_a_recompile_cause_keeps_what_changed_and_drops_only_the_values(kind, source, expected,
                                                                        actual):
    # Two different global-state changes are two causes: each gets its own repro and --compare
    # line, so the subject's own colon must survive.
    failure = GuardFailure(entry="0/1", kind=kind, source=source, expected=expected, actual=actual,
                           where=None, note=None, text="")
    assert failed_guard(f"{failure.entry}: {failure.describe()}") == failure.subject()
