"""The pytest plugin, run the way users run it: pytest through the entry point, in a process of
its own where the process is part of what a test is about.

A process imports torch (seconds on a loaded machine), so each run covers many scenarios. The
marker and the fixtures run in a subprocess: the plugin must load without the compiler there, and
those tests register compile callbacks. So does the TestCase suite: importing
torch._dynamo.test_case freezes torch's backend flags for the rest of the process (setting one
outside a `flags()` block raises). The runs
about order, workers, watching, reports and baselines run in this process, through pytester's
in-process runs (the `-n 2` ones on two worker processes), after programs_report has compiled
here, so that what a compile imports from torch is imported before them. Option errors and the
plain run are checked in-process too, where nothing compiles.
"""

import json
import os
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Imported before the in-process runs, which would otherwise import it for the first time and
# have pytester drop it from sys.modules afterwards.
import fullgraph.checks.report  # noqa: F401
from fullgraph.checks.pytest_plugin import Increase, increases, load_baseline, marker_limits
from fullgraph.checks.report import Report, render_markdown
from fullgraph.checks.watch import watch

pytest_plugins = "pytester"

BUILTIN = "Failed to trace builtin operator"
BRANCH = "Data-dependent branching"

FUNCTIONS = '''
import torch


def prints(x):
    y = x * 2
    print("tracing")
    return y + 1


def branches(x):
    if x.sum() > 0:
        return x + 1
    return x - 1


def adds(x, n):
    return x + n


def compile_adds(values):
    compiled = torch.compile(adds, backend="eager")
    for n in values:
        compiled(torch.ones(3), n)
'''


def line_of(source: str, text: str) -> int:
    # pytester writes the source stripped of its leading newline.
    lines = source.strip().splitlines()
    (number,) = [n for n, line in enumerate(lines, start=1) if text in line]
    return number


PRINT_LINE = line_of(FUNCTIONS, 'print("tracing")')
ADDS_LINE = line_of(FUNCTIONS, "def adds")


# -- the marker and the fixtures ------------------------------------------------------------------

MARKED_CONFTEST = '''
import sys

# Read when pytest imports this conftest: after every plugin, before any test ran.
LOADED_AT_START = {name: name in sys.modules
                   for name in ("fullgraph.checks.pytest_plugin", "torch._dynamo")}
'''

MARKED_TESTS = '''
import pytest
import torch

from functions import compile_adds, prints

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
COMPILES_STARTED = []
torch._dynamo.callback.on_compile_start(COMPILES_STARTED.append)


def test_plugin_is_loaded_without_the_compiler():
    import conftest

    assert conftest.LOADED_AT_START == {"fullgraph.checks.pytest_plugin": True,
                                        "torch._dynamo": False}


@pytest.mark.fullgraph
def test_breaks_the_graph():
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph(max_graph_breaks=1)
def test_one_break_allowed():
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph(max_recompiles=0)
def test_recompiles_past_the_budget():
    compile_adds([1, 2, 3])


@pytest.mark.fullgraph
def test_recompiles_without_a_budget():
    compile_adds([1, 2, 3])


@pytest.mark.fullgraph(max_recompiles=10)
def test_hits_the_recompile_limit():
    with torch._dynamo.config.patch(recompile_limit=1):
        compile_adds([1, 2, 3])


@pytest.mark.fullgraph(max_breaks=1, strict=True)
def test_unknown_keywords():
    pass


@pytest.mark.fullgraph(max_recompiles="1")
def test_not_an_int():
    pass


def test_compile_tracker_is_live(compile_tracker):
    compile_adds([1])
    assert [event.kind for event in compile_tracker.events] == ["compile"]
    compile_adds([2])
    assert [event.kind for event in compile_tracker.events] == ["compile", "recompile"]


@pytest.mark.fullgraph  # watch() inside the fixture's track_compiles()
def test_fresh_dynamo_resets_before_the_test(compile_tracker):
    # The test above compiled adds for two values; after the reset it compiles once again.
    compile_adds([2])
    assert [event.kind for event in compile_tracker.events] == ["compile"]


@pytest.fixture
def warm_prints():
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph
def test_what_the_setup_compiled_is_traced_again(warm_prints):
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph(fresh=False)
def test_fresh_false_runs_what_the_setup_compiled(warm_prints):
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph
def test_resets_keep_the_compile_callbacks():
    # Registered on import, before the fixture's and the marker's resets of every test.
    COMPILES_STARTED.clear()
    compile_adds([1])
    assert len(COMPILES_STARTED) == 1
'''


def test_marker_fails_past_its_limits_and_fixtures_track_and_reset(pytester, run_pytest):
    pytester.makepyfile(functions=FUNCTIONS, test_marked=MARKED_TESTS)
    pytester.makeconftest(MARKED_CONFTEST)
    result = run_pytest("-p", "no:cacheprovider", "--strict-markers", "-rfE")
    result.assert_outcomes(passed=7, failed=4, errors=2)
    result.stdout.fnmatch_lines([
        "E   fullgraph.checks.graph_breaks.GraphBreakError: "
        "1 graph break in test_breaks_the_graph (limit 0)",
        f"      1. functions.py:{PRINT_LINE} in prints: {BUILTIN}",
        '           print("tracing")',
        "           Hint: *",
        "    Hint: fix them in order, as one break can cause the next",
    ])
    result.stdout.fnmatch_lines([
        "E   fullgraph.checks.recompiles.RecompileBudgetError: "
        "adds recompiled 1 time, more than the limit of 0 per function",
        f"      1. functions.py:{ADDS_LINE} in adds: recompile #1 (compile */1)",
        "           value guard on n: expected 1 (entry */0)",
        f"             guarded at functions.py:{ADDS_LINE + 1} in adds: return x + n",
        "    Hint: A Python value is baked into the graph*",
    ])
    result.stdout.fnmatch_lines([
        "E   fullgraph.checks.recompiles.RecompileBudgetError: "
        "1 hit torch._dynamo.config.recompile_limit and fell back to eager",
        f"      1. functions.py:{ADDS_LINE} in adds: recompile #* refused: recompile limit hit *",
    ])
    result.stdout.fnmatch_lines([
        "*_ ERROR at setup of test_unknown_keywords _*",
        "E   TypeError: @pytest.mark.fullgraph got unknown keyword argument(s) max_breaks, "
        "strict; it takes max_graph_breaks, max_recompiles, fresh",
        "*_ ERROR at setup of test_not_an_int _*",
        "E   TypeError: @pytest.mark.fullgraph: max_recompiles must be an int, got '1'",
    ])
    result.stdout.fnmatch_lines(["E   fullgraph.checks.graph_breaks.GraphBreakError: "
                                 "1 graph break in test_what_the_setup_compiled_is_traced_again *"])
    result.stdout.no_fnmatch_line("*test_one_break_allowed*")
    result.stdout.no_fnmatch_line("*test_recompiles_without_a_budget*")
    result.stdout.no_fnmatch_line("*test_fresh_false_runs_what_the_setup_compiled*")


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"max_graph_breaks": -1}, "max_graph_breaks must be >= 0, got -1"),
    ({"max_graph_breaks": True}, "max_graph_breaks must be an int, got True"),
    ({"max_recompiles": 1.0}, "max_recompiles must be an int, got 1.0"),
    ({"fresh": 1}, "fresh must be True, False or None, got 1"),
])
def test_marker_values_are_checked_by_name(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        marker_limits(pytest.mark.fullgraph(**kwargs).mark)


def test_marker_takes_keywords_only():
    with pytest.raises(TypeError, match=r"keyword arguments only, got \(0,\)"):
        marker_limits(pytest.mark.fullgraph(0).mark)


# -- the same verdicts and counts in any test order -----------------------------------------------

ORDER_CONFTEST = '''
def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
'''

ORDER_TESTS = '''
import pytest
import torch

from functions import compile_adds, prints


def test_unmarked_compiles_prints():
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph
def test_marked_runs_prints():
    # In this order dynamo has prints' code cached: a warm cache would hide the break.
    torch.compile(prints, backend="eager")(torch.ones(3))


@pytest.mark.fullgraph(fresh=True)  # whatever the ini option says
def test_marked_fresh_runs_prints():
    torch.compile(prints, backend="eager")(torch.ones(3))


def test_unmarked_compiles_adds_for_1():
    compile_adds([1])


@pytest.mark.fullgraph(max_recompiles=0)
def test_marked_compiles_adds_for_2():
    # In this order a warm cache would make it recompile adds, guarded on n == 1.
    compile_adds([2])
'''

# What each test gets run alone.
VERDICTS = {"test_unmarked_compiles_prints": "PASSED", "test_marked_runs_prints": "FAILED",
            "test_marked_fresh_runs_prints": "FAILED", "test_unmarked_compiles_adds_for_1": "PASSED",
            "test_marked_compiles_adds_for_2": "PASSED"}
COUNTS = {f"test_order.py::{name}": counts for name, counts in [
    ("test_unmarked_compiles_prints", {"graph_breaks": 1, "recompiles": 0}),
    ("test_marked_runs_prints", {"graph_breaks": 1, "recompiles": 0}),
    ("test_marked_fresh_runs_prints", {"graph_breaks": 1, "recompiles": 0}),
    ("test_unmarked_compiles_adds_for_1", {"graph_breaks": 0, "recompiles": 0}),
    ("test_marked_compiles_adds_for_2", {"graph_breaks": 0, "recompiles": 0})]}


def verdicts(result) -> dict[str, str]:
    """{test name: PASSED or FAILED}, from the -rA summary (the same under xdist)."""
    found = [re.match(r"(PASSED|FAILED|ERROR) \S+::(\w+)", line) for line in result.outlines]
    return {match[2]: match[1] for match in found if match}


def test_verdicts_and_counts_do_not_depend_on_test_order_or_worker(pytester, run_in_process):
    pytester.makepyfile(functions=FUNCTIONS, test_order=ORDER_TESTS)
    pytester.makeconftest(ORDER_CONFTEST)

    def run(*args):
        return run_in_process("-p", "no:cacheprovider", "-p", "no:randomly", "-rA", *args)

    # Every test watched, for its counts: in file order, reversed and on two workers.
    runs = {"forward": run("--fullgraph-report=forward.json"),
            "reversed": run("--reverse", "--fullgraph-report=reversed.json"),
            "workers": run("-n", "2", "--fullgraph-report=workers.json")}
    assert {name: verdicts(result) for name, result in runs.items()} == dict.fromkeys(runs, VERDICTS)
    for name in runs:
        assert json.loads((pytester.path / f"{name}.json").read_text())["tests"] == COUNTS, name

    # The marker alone, with the opt-out: every cache stays warm, and the verdicts are this
    # order's.
    warm = run("-o", "fullgraph_fresh=false")
    assert verdicts(warm) == {**VERDICTS, "test_marked_runs_prints": "PASSED",
                              "test_marked_compiles_adds_for_2": "FAILED"}


# -- a suite that clears torch's counters ---------------------------------------------------------

TESTCASE_TESTS = '''
import torch
from torch._dynamo.test_case import TestCase

from functions import compile_adds, prints


def skips_cudagraphs(gm, example_inputs):
    # What inductor does for a graph on a non-CUDA device under mode="reduce-overhead".
    torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] += 1
    return gm.forward


def doubles(x):
    return x * 2


class TestCompiles(TestCase):  # reset() and counters.clear() in setUp and in tearDown
    def test_prints(self):
        torch.compile(prints, backend="eager")(torch.ones(3))

    def test_recompiles(self):
        compile_adds([1, 2])

    def test_skips_cudagraphs(self):
        torch.compile(doubles, backend=skips_cudagraphs)(torch.ones(3))
'''


def test_a_suite_that_clears_torch_counters_gets_its_graphs_counted(pytester, run_pytest):
    pytester.makepyfile(functions=FUNCTIONS, test_testcase=TESTCASE_TESTS)
    result = run_pytest("-p", "no:cacheprovider", "--fullgraph-report=run.json")
    result.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "run.json").read_text())
    summary = {name: report["summary"][name] for name in (
        "graph_count", "graph_breaks", "compiles", "recompiles", "limit_hits", "cudagraph_skips")}
    # prints: a graph either side of the print, the second in the resume function dynamo
    # compiles; adds: one per compile; doubles: one.
    assert summary == {"graph_count": 5, "graph_breaks": 1, "compiles": 5, "recompiles": 1,
                       "limit_hits": 0, "cudagraph_skips": 1}
    assert report["cudagraph_skips"] == [
        "1 more skipped without a logged reason (inductor skips graphs on a non-CUDA device this way)"]


# -- watching a whole suite, its report and its baseline -------------------------------------------

SUITE_CONFTEST = '''
import pytest


@pytest.fixture(autouse=True)
def _fresh(fresh_dynamo):
    # Counts that do not depend on which test, or which worker, compiled a function first.
    pass
'''

SUITE_TESTS = '''
import torch

from functions import branches, compile_adds, prints


def test_prints_once():
    torch.compile(prints, backend="eager")(torch.ones(3))


def test_prints_again():
    torch.compile(prints, backend="eager")(torch.ones(3))


def test_branches():
    torch.compile(branches, backend="eager")(torch.ones(3))


def test_recompiles():
    compile_adds([1, 2, 3])


def test_clean():
    compile_adds([1])
'''


def test_watch_report_and_baseline_then_compare_under_xdist(programs_report, pytester,
                                                            run_in_process):
    # Not test_suite.py: this process has imported the suite's own test_suite module by that name.
    pytester.makepyfile(functions=FUNCTIONS, test_watched=SUITE_TESTS)
    pytester.makeconftest(SUITE_CONFTEST)
    baseline = pytester.path / "fullgraph.json"

    written = run_in_process(
        "-p", "no:cacheprovider", "--fullgraph-watch", "--fullgraph-report=run.json",
        f"--fullgraph-baseline={baseline}", "--fullgraph-update-baseline")
    written.assert_outcomes(passed=5)
    written.stdout.fnmatch_lines([
        "*= fullgraph =*",
        "5 tests watched: 3 broke the graph, 1 recompiled",
        "graph breaks, by type and location:",
        f"  {BUILTIN}",
        f'    functions.py:{PRINT_LINE} in prints: print("tracing")',
        "      test_watched.py::test_prints_once",
        "      test_watched.py::test_prints_again",
        f"  {BRANCH}",
        "*      test_watched.py::test_branches",
        "recompiles, by function and guard:",
        f"  functions.py:{ADDS_LINE} in adds",
        "    value guard on n",
        "      test_watched.py::test_recompiles",
        "report written to run.json",
        f"baseline written to {baseline} (5 tests updated)",
    ])
    counts = {"graph_breaks": 1, "recompiles": 0}
    assert json.loads(baseline.read_text()) == {
        "test_watched.py::test_branches": counts,
        "test_watched.py::test_clean": {"graph_breaks": 0, "recompiles": 0},
        "test_watched.py::test_prints_again": counts,
        "test_watched.py::test_prints_once": counts,
        "test_watched.py::test_recompiles": {"graph_breaks": 0, "recompiles": 1},
    }
    report = json.loads((pytester.path / "run.json").read_text())
    assert report["kind"] == "compile-report"
    assert report["tests"] == json.loads(baseline.read_text())
    assert report["summary"]["graph_breaks"] == 2  # distinct sites, over the whole run
    printed = next(brk for brk in report["graph_breaks"] if brk["gb_type"] == BUILTIN)
    assert printed["count"] == 2
    assert printed["tests"] == ["test_watched.py::test_prints_once", "test_watched.py::test_prints_again"]
    assert [c["test"] for c in report["compiles"] if c["recompile"]] == ["test_watched.py::test_recompiles"]
    assert_shaped_like(report, programs_report, pytester.path)
    # The Markdown the plugin writes from that same dict.
    assert_markdown_names_the_tests(render_markdown(SimpleNamespace(to_dict=lambda: report)))

    # One count up, one test new to the baseline, one count down (not a failure).
    stored = json.loads(baseline.read_text())
    stored["test_watched.py::test_recompiles"]["recompiles"] = 0
    del stored["test_watched.py::test_branches"]
    stored["test_watched.py::test_prints_once"]["graph_breaks"] = 3
    baseline.write_text(json.dumps(stored))
    compared = run_in_process(
        "-p", "no:cacheprovider", "-n", "2", "--fullgraph-watch", "--fullgraph-report=run.html",
        f"--fullgraph-baseline={baseline}")
    assert compared.ret == pytest.ExitCode.TESTS_FAILED
    compared.assert_outcomes(passed=5)
    compared.stdout.fnmatch_lines([
        "*= fullgraph =*",
        f'    functions.py:{PRINT_LINE} in prints: print("tracing")',
        "      test_watched.py::test_prints_*",
        "      test_watched.py::test_prints_*",
        f"2 increase(s) over the baseline {baseline}:",
        "  test_watched.py::test_*: *",
        "  test_watched.py::test_*: *",
        "If they are expected, record them with --fullgraph-update-baseline.",
    ])
    compared.stdout.fnmatch_lines(["  test_watched.py::test_recompiles: recompiles 0 -> 1"])
    compared.stdout.fnmatch_lines(
        ["  test_watched.py::test_branches: graph breaks not in the baseline, so 0 -> 1"])
    compared.stdout.no_fnmatch_line("*test_prints_once: graph breaks*")
    assert_html_names_the_tests((pytester.path / "run.html").read_text())
    assert json.loads(baseline.read_text()) == stored  # compared, not rewritten


@pytest.fixture
def run_in_process(pytester, programs_report):
    """pytester.runpytest_inprocess, once programs_report has compiled and watched in this process:
    the runs drop every module they import, and torch's cannot be imported twice."""
    return pytester.runpytest_inprocess


@pytest.fixture(scope="module")
def programs_report(tmp_path_factory) -> dict:
    """The report `fullgraph report` makes of a program calling the suite's functions, made in a
    temporary directory as the current one.

    Module-scoped, so that what it imports from torch is imported before pytester's runs in this
    process, which drop the modules they saw imported (torch's cannot be imported twice)."""
    folder = tmp_path_factory.mktemp("program")
    (folder / "functions.py").write_text(FUNCTIONS.strip() + "\n")
    functions = runpy.run_path(str(folder / "functions.py"))
    started_in = Path.cwd()
    os.chdir(folder)
    try:
        torch.compiler.reset()
        with watch() as seen:
            torch.compile(functions["prints"], backend="eager")(torch.ones(3))
            functions["compile_adds"]([1, 2])
        torch.compiler.reset()
        program = Report(seen, command=f"python {folder / 'functions.py'}").to_dict()
    finally:
        os.chdir(started_in)
    assert program["command"] == "python ./functions.py"
    assert str(folder) not in json.dumps(program)
    return program


def assert_shaped_like(run: dict, program: dict, folder: Path) -> None:
    """A test run's report has every field of a program's report, and no path under `folder`
    (the temporary directory it ran in) left unshortened."""
    assert set(run) - {"tests"} == set(program)
    for name in ("exit", "env", "summary", "reproduction"):
        assert set(run[name]) == set(program[name]), name
    assert set(run["graph_breaks"][0]) - {"tests"} == set(program["graph_breaks"][0])
    assert set(run["compiles"][0]) - {"test"} == set(program["compiles"][0])
    assert str(folder) not in json.dumps(run)


def the_break(sections: list[str], gb_type: str) -> str:
    return next(section for section in sections if gb_type in section.partition("\n")[0])


def assert_markdown_names_the_tests(text: str) -> None:
    tests = text[text.index("## Tests"):text.index("## Graph breaks")]
    assert tests.splitlines()[2:] == [
        "| test | graph breaks | recompiles |", "|---|---:|---:|",
        "| `test_watched.py::test_branches` | 1 | 0 |",
        "| `test_watched.py::test_prints_again` | 1 | 0 |",
        "| `test_watched.py::test_prints_once` | 1 | 0 |",
        "| `test_watched.py::test_recompiles` | 0 | 1 |", "",
        "Not listed: 1 test with no graph breaks and no recompiles.", ""]
    breaks = text[text.index("## Graph breaks"):text.index("## Recompiles")].split("\n### ")[1:]
    assert ("Met in: `test_watched.py::test_prints_once`, `test_watched.py::test_prints_again`."
            in the_break(breaks, BUILTIN))
    assert "Met in: `test_watched.py::test_branches`." in the_break(breaks, BRANCH)
    recompiles = text[text.index("## Recompiles"):text.index("## Reproduction")]
    assert [line for line in recompiles.splitlines() if line.startswith("| 0/")] == [
        f"| 0/1 | `test_watched.py::test_recompiles` | `adds` (functions.py:{ADDS_LINE}) "
        "| 0/0: value guard on n: expected 1 |"]


def assert_html_names_the_tests(page: str) -> None:
    # Under xdist the tests that met a break come in the order the workers finished them.
    assert page.startswith("<!DOCTYPE html>")
    tests = page[page.index("<h2>Tests</h2>"):page.index("<h2>Graph breaks</h2>")]
    assert re.findall(r"<tr><td><code>(.+?)</code></td><td>(\d)</td><td>(\d)</td></tr>", tests) == [
        ("test_watched.py::test_branches", "1", "0"), ("test_watched.py::test_prints_again", "1", "0"),
        ("test_watched.py::test_prints_once", "1", "0"), ("test_watched.py::test_recompiles", "0", "1")]
    assert "<p>Not listed: 1 test with no graph breaks and no recompiles.</p>" in tests
    breaks = page[:page.index("<h2>Recompiles</h2>")].split('<section class="break">')[1:]
    printed = re.search(r"<p>Met in: (.+?)\.</p>", the_break(breaks, BUILTIN))[1]
    assert sorted(printed.split(", ")) == ["<code>test_watched.py::test_prints_again</code>",
                                           "<code>test_watched.py::test_prints_once</code>"]
    assert "<p>Met in: <code>test_watched.py::test_branches</code>.</p>" in the_break(breaks, BRANCH)
    recompiles = page[page.index("<h2>Recompiles</h2>"):page.index("<h2>Timeline of compiles</h2>")]
    assert re.findall(r"<tr><td>([\d/]+)</td><td><code>(.+?)</code></td>", recompiles) == [
        ("0/1", "test_watched.py::test_recompiles")]
    assert '<span class="label" title="0/1 recompile: adds in test_watched.py::test_recompiles">' in page


# -- a plain run, and options that cannot work ----------------------------------------------------

PLAIN_TESTS = '''
def test_plain(pytestconfig):
    assert not pytestconfig.pluginmanager.has_plugin("fullgraph-watcher")
'''


def test_a_plain_run_registers_nothing_and_prints_nothing_extra(pytester):
    pytester.makepyfile(test_plain=PLAIN_TESTS)
    runs = [pytester.runpytest("-p", "no:cacheprovider", "-q", "-rA", *blocked)
            for blocked in ([], ["-p", "no:fullgraph"])]
    for run in runs:
        run.assert_outcomes(passed=1)
    with_plugin, without = ([re.sub(r"in [\d.]+s", "in <time>", line) for line in run.outlines]
                            for run in runs)
    assert with_plugin == without


@pytest.mark.parametrize(("args", "error"), [
    (["--fullgraph-update-baseline"], "--fullgraph-update-baseline needs --fullgraph-baseline=FILE"),
    (["--fullgraph-baseline=missing.json"],
     "--fullgraph-baseline: missing.json does not exist; write it with --fullgraph-update-baseline"),
    (["--fullgraph-baseline=bad.json"], "--fullgraph-baseline: bad.json must map each test id to *"),
    (["--fullgraph-report=run.txt"], "--fullgraph-report: *cannot tell the format of 'run.txt'*"),
])
def test_unusable_options_stop_the_run_before_any_test(pytester, args, error):
    (pytester.path / "bad.json").write_text('{"test_a.py::test_a": 3}')
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {error}"])


def test_help_lists_every_option_in_one_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "fullgraph: what torch.compile did in each test:",
        "  --fullgraph-watch*",
        "  --fullgraph-report=PATH*",
        "  --fullgraph-baseline=FILE*",
        "  --fullgraph-update-baseline*",
    ], consecutive=False)
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(
        ["@pytest.mark.fullgraph(max_graph_breaks=0, max_recompiles=None, fresh=None):*"])


def test_increases_compare_each_count_and_treat_new_tests_as_zero():
    baseline = {"t::a": {"graph_breaks": 1, "recompiles": 2}, "t::b": {"graph_breaks": 0}}
    counts = {"t::a": {"graph_breaks": 0, "recompiles": 3},
              "t::b": {"graph_breaks": 0, "recompiles": 1},
              "t::c": {"graph_breaks": 0, "recompiles": 0},
              "t::d": {"graph_breaks": 2, "recompiles": 0}}
    assert increases(baseline, counts) == [Increase("t::a", "recompiles", 2, 3),
                                           Increase("t::b", "recompiles", 0, 1),
                                           Increase("t::d", "graph_breaks", None, 2)]
    assert Increase("t::a", "recompiles", 2, 3).describe() == "t::a: recompiles 2 -> 3"


def test_load_baseline_reads_what_update_writes(tmp_path):
    path = tmp_path / "b.json"
    assert load_baseline(path, missing_ok=True) == {}
    path.write_text("{not json")
    with pytest.raises(pytest.UsageError, match="cannot read"):
        load_baseline(path)
