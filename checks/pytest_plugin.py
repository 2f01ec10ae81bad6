"""The pytest plugin: two fixtures, the `fullgraph` marker and the --fullgraph-* options.

    def test_counts(compile_tracker): ...          # track_compiles() around the test
    def test_sweep(fresh_dynamo): ...              # torch.compiler.reset() before and after
    @pytest.mark.fullgraph(max_graph_breaks=0, max_recompiles=1)
    def test_forward(): ...                        # fails past either limit

    pytest --fullgraph-watch                       # which tests broke the graph or recompiled
    pytest --fullgraph-report=run.md               # the whole run's report: .md, .json or .html
    pytest --fullgraph-baseline=fullgraph.json [--fullgraph-update-baseline]

The pytest11 entry point loads this module wherever fullgraph is installed, in every project's
test run, so it costs nothing until one of those is used: torch's compiler is imported inside
hooks and fixtures only, and the per-test hooks are registered only when a collected test
carries the marker or an option asks for them.

Only a test's call phase is watched. A session fixture compiles once, in whichever test sets it
up first: counting fixtures would make a test's numbers depend on test order and on the xdist
worker it ran on. For the same reason a watched test starts from a fresh dynamo: the call phase
begins with torch.compiler.reset(), or dynamo would run what an earlier test compiled without
tracing it again, and the test would see none of its breaks. The `fullgraph_fresh` ini option
(for the run) and the marker's `fresh` (for one test) turn that off, for suites that rely on warm
caches and accept numbers that depend on order.

Under pytest-xdist each worker watches its own tests and puts what it saw on the call phase's
TestReport as an extra attribute, which pytest serialises with the report; the controller reads
every test's numbers from the reports, the same way with or without workers. What
`--fullgraph-report` writes, those tests' reports merged into one, is made in _run_report.py.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "MARKER",
    "COUNTS",
    "Limits",
    "marker_limits",
    "Increase",
    "increases",
    "load_baseline",
    "write_baseline",
    "compile_tracker",
    "fresh_dynamo",
    "pytest_addoption",
    "pytest_configure",
    "pytest_collection_modifyitems",
]

MARKER = "fullgraph"
COUNTS = ("graph_breaks", "recompiles")  # what a baseline holds for each test
_MARKER_HELP = (f"{MARKER}(max_graph_breaks=0, max_recompiles=None, fresh=None): reset dynamo "
                "as the test starts (fresh=None: as the fullgraph_fresh ini option says), watch "
                "every compile in the test and fail past either limit (recompiles are counted "
                "per function); a recompile-limit fallback to eager always fails")
_FRESH_INI = "fullgraph_fresh"
_LIMITS = pytest.StashKey["Limits"]()
_WATCHED = pytest.StashKey[Any]()
_REPORT_ATTRIBUTE = "fullgraph"  # the TestReport attribute that carries a test's record


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def compile_tracker():
    """track_compiles() around the test: the live CompileReport of every compile in it."""
    from .recompiles import track_compiles

    with track_compiles() as report:
        yield report


@pytest.fixture
def fresh_dynamo():
    """torch.compiler.reset() before and after the test: it compiles from scratch, and leaves
    nothing compiled for the next test. Compile callbacks the suite registered are kept."""
    from ._compat.dynamo import reset_dynamo

    reset_dynamo()
    yield
    reset_dynamo()


# -- the marker ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """A marked test's limits; max_recompiles None means no budget (limit hits still fail).

    fresh: whether dynamo is reset as the test starts; None leaves it to the fullgraph_fresh ini
    option (true unless set).
    """

    max_graph_breaks: int = 0
    max_recompiles: int | None = None
    fresh: bool | None = None


def marker_limits(marker: pytest.Mark) -> Limits:
    """The Limits a `fullgraph` marker asks for; TypeError or ValueError naming what is wrong."""
    __tracebackhide__ = True
    if marker.args:
        raise TypeError(f"@pytest.mark.{MARKER} takes keyword arguments only, got {marker.args!r}")
    known = Limits.__dataclass_fields__
    unknown = [name for name in marker.kwargs if name not in known]
    if unknown:
        raise TypeError(f"@pytest.mark.{MARKER} got unknown keyword argument(s) "
                        f"{', '.join(unknown)}; it takes {', '.join(known)}")
    for name, value in marker.kwargs.items():
        if value is None and name in ("max_recompiles", "fresh"):
            continue
        if name == "fresh":
            if not isinstance(value, bool):
                raise TypeError(f"@pytest.mark.{MARKER}: fresh must be True, False or None, "
                                f"got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"@pytest.mark.{MARKER}: {name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"@pytest.mark.{MARKER}: {name} must be >= 0, got {value}")
    return Limits(**marker.kwargs)


def _enforce(limits: Limits, watched: Any, test: str) -> None:
    """Raise GraphBreakError or RecompileBudgetError (the first that applies, with both messages)."""
    __tracebackhide__ = True
    from ._message import counted, format_failure
    from .graph_breaks import GraphBreakError, break_entry
    from .recompiles import RecompileBudgetError, budget_message, over_budget

    failures = []
    breaks = [brk for brk in watched.graph_breaks if not brk.disabled]
    if len(breaks) > limits.max_graph_breaks:
        headline = (f"{counted(len(breaks), 'graph break')} in {test} "
                    f"(limit {limits.max_graph_breaks})")
        hint = "fix them in order, as one break can cause the next"
        failures.append((GraphBreakError,
                         format_failure(headline, [break_entry(brk) for brk in breaks], hint)))
    # Without a budget only the recompile-limit hits are offenders.
    budget = sys.maxsize if limits.max_recompiles is None else limits.max_recompiles
    offenders = over_budget(watched.compiles, budget, per_function=True)
    if offenders:
        failures.append((RecompileBudgetError, budget_message(watched, offenders, budget,
                                                              per_function=True, msg=None)))
    if failures:
        raise failures[0][0]("\n\n".join(message for _, message in failures), watched)


# -- options ------------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(MARKER, "fullgraph: what torch.compile did in each test")
    group.addoption("--fullgraph-watch", action="store_true", default=False,
                    help="watch every test's compiles and list, in the terminal summary, each "
                         "test that broke the graph or recompiled, grouped by graph-break type "
                         "and location and by function and guard")
    group.addoption("--fullgraph-report", metavar="PATH", default=None,
                    help="write what torch.compile did in the whole run to PATH, as Markdown, "
                         "JSON or HTML by its extension (.md, .json, .html); implies watching")
    group.addoption("--fullgraph-baseline", metavar="FILE", default=None,
                    help="compare each test's graph breaks and recompiles with FILE (JSON, "
                         "{nodeid: {graph_breaks: n, recompiles: m}}) and fail the run on any "
                         "increase; implies watching")
    group.addoption("--fullgraph-update-baseline", action="store_true", default=False,
                    help="write the counts of the tests that ran into the --fullgraph-baseline "
                         "FILE instead of comparing (other tests' entries are kept)")
    parser.addini(_FRESH_INI, type="bool", default=True,
                  help="reset dynamo as each watched test starts, so that its graph breaks and "
                       "recompiles do not depend on what earlier tests compiled (default true; "
                       "a marker's fresh=True or False wins)")


@dataclass(frozen=True)
class _Options:
    watch: bool
    report: Path | None
    baseline: Path | None
    update_baseline: bool

    @property
    def any(self) -> bool:
        return self.watch or self.report is not None or self.baseline is not None


def _options(config: pytest.Config) -> _Options:
    report = config.getoption("fullgraph_report")
    baseline = config.getoption("fullgraph_baseline")
    return _Options(watch=config.getoption("fullgraph_watch"),
                    report=Path(report) if report else None,
                    baseline=Path(baseline) if baseline else None,
                    update_baseline=config.getoption("fullgraph_update_baseline"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    options = _options(config)
    if options.update_baseline and options.baseline is None:
        raise pytest.UsageError("--fullgraph-update-baseline needs --fullgraph-baseline=FILE")
    if not options.any:
        return
    config.pluginmanager.register(_Watcher(every_test=True, report=options.report is not None,
                                           fresh=config.getini(_FRESH_INI)),
                                  "fullgraph-watcher")
    if not _is_xdist_worker(config):
        run = _Run(config, options)
        run.check_options()
        config.pluginmanager.register(run, "fullgraph-run")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A plain run registers nothing: the per-test hooks exist only once a test needs them.
    if config.pluginmanager.has_plugin("fullgraph-watcher"):
        return
    if any(item.get_closest_marker(MARKER) is not None for item in items):
        config.pluginmanager.register(_Watcher(every_test=False, report=False,
                                               fresh=config.getini(_FRESH_INI)),
                                      "fullgraph-watcher")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# -- watching each test (in the process that runs it) -------------------------------------------

class _Watcher:
    """Watches the call phase of marked tests, or of every test; enforces the marker's limits.

    `fresh`: the fullgraph_fresh ini option, for tests whose marker does not say.
    """

    def __init__(self, *, every_test: bool, report: bool, fresh: bool) -> None:
        self.every_test = every_test
        self.report = report
        self.fresh = fresh

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Before any fixture runs, so a misspelt marker costs no setup.
        __tracebackhide__ = True
        marker = item.get_closest_marker(MARKER)
        if marker is not None:
            item.stash[_LIMITS] = marker_limits(marker)

    # Innermost, so that pytest's log capture starts first: it hooks every logger that does not
    # propagate when it starts, and would print the recompile log watch() keeps to itself.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_runtest_call(self, item: pytest.Item):
        __tracebackhide__ = True
        limits = item.stash.get(_LIMITS, None)
        if limits is None and not self.every_test:
            return (yield)
        from ._compat.dynamo import reset_dynamo
        from .watch import watch

        if self._starts_fresh(limits):
            # Dynamo runs what an earlier test compiled without tracing it again: that code's
            # breaks and recompiles would be charged to whichever test compiled it first.
            reset_dynamo()
        with watch() as watched:
            item.stash[_WATCHED] = (watched, time.time())
            result = yield
        if limits is not None:
            _enforce(limits, watched, item.name)
        return result

    def _starts_fresh(self, limits: Limits | None) -> bool:
        return self.fresh if limits is None or limits.fresh is None else limits.fresh

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if call.when != "call" or _WATCHED not in item.stash:
            return report
        # Items live as long as the session: drop the Watch, it holds code objects and frames.
        watched, started = item.stash[_WATCHED]
        del item.stash[_WATCHED]
        if self.every_test:
            setattr(report, _REPORT_ATTRIBUTE, _record(watched, started, nodeid=item.nodeid,
                                                       report=self.report))
        return report


def _record(watched: Any, started: float, *, nodeid: str, report: bool) -> dict:
    """One test's record: builtins only, so that xdist can send it to the controller."""
    summary = watched.summary()
    record = {
        "graph_breaks": summary["graph_breaks"],
        "recompiles": summary["recompiles"],
        "breaks": [{"gb_type": brk.gb_type, "location": brk.location.location(),
                    "line": brk.location.line}
                   for brk in watched.graph_breaks if not brk.disabled],
        "recompiled": [{"function": event.function.location(), "guard": _guard_kind(event)}
                       for event in watched.recompiles],
    }
    if report:
        from .report import Report

        # The environment is the controller's to add, once.
        record["report"] = Report(watched, command=nodeid, env={}).to_dict()
        record["started"] = started
    return record


def _guard_kind(event: Any) -> str:
    if event.kind == "recompile_limit":
        return "recompile limit hit"
    return event.failures[0].subject() if event.failures else "no guard reported"


# -- the run (in the controller, or the only process) -------------------------------------------

@dataclass(frozen=True)
class Increase:
    """A test whose count went up against the baseline; `old` is None for a test not in it."""

    nodeid: str
    count: str
    old: int | None
    new: int

    def describe(self) -> str:
        old = "not in the baseline, so 0" if self.old is None else str(self.old)
        return f"{self.nodeid}: {self.count.replace('_', ' ')} {old} -> {self.new}"


class _Run:
    """Collects every test's record from its report; compares, writes and prints at the end."""

    def __init__(self, config: pytest.Config, options: _Options) -> None:
        self.config = config
        self.options = options
        self.records: dict[str, dict] = {}
        self.baseline: dict[str, dict] = {}
        self.increases: list[Increase] = []
        self.written: list[str] = []

    def check_options(self) -> None:
        """Fail before any test runs, not after the whole suite."""
        if self.options.report is not None:
            from .report import format_for_path

            try:
                format_for_path(self.options.report)
            except ValueError as error:
                raise pytest.UsageError(f"--fullgraph-report: {error}") from None
        if self.options.baseline is not None:
            self.baseline = load_baseline(self.options.baseline,
                                          missing_ok=self.options.update_baseline)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, _REPORT_ATTRIBUTE, None)
        if report.when == "call" and record is not None:
            self.records[report.nodeid] = record

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if session.exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR):
            return  # a partial run must not overwrite a baseline or pass as a report
        if self.options.report is not None:
            self._write_report(session)
        if self.options.baseline is not None:
            self._baseline(session)

    def _write_report(self, session: pytest.Session) -> None:
        from ._run_report import RunReport
        from .report import write_report

        command = shlex.join(["pytest", *self.config.invocation_params.args])
        write_report(RunReport(self.records, command, int(session.exitstatus)),
                     self.options.report)
        self.written.append(f"report written to {self.options.report}")

    def _baseline(self, session: pytest.Session) -> None:
        counts = {nodeid: {name: record[name] for name in COUNTS}
                  for nodeid, record in self.records.items()}
        if self.options.update_baseline:
            write_baseline(self.options.baseline, {**self.baseline, **counts})
            self.written.append(f"baseline written to {self.options.baseline} "
                                f"({len(counts)} tests updated)")
            return
        self.increases = increases(self.baseline, counts)
        if self.increases and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "fullgraph", red=bool(self.increases))
        if self.options.watch:
            for line in _summary_lines(self.records):
                write(line)
        if self.increases:
            write(f"{len(self.increases)} increase(s) over the baseline {self.options.baseline}:",
                  red=True)
            for increase in self.increases:
                write(f"  {increase.describe()}")
            write("If they are expected, record them with --fullgraph-update-baseline.")
        elif self.options.baseline is not None and not self.options.update_baseline:
            write(f"no test's graph breaks or recompiles went up over "
                  f"{self.options.baseline} ({len(self.records)} tests compared)")
        for line in self.written:
            write(line)


# -- the terminal summary -----------------------------------------------------------------------

def _summary_lines(records: dict[str, dict]) -> list[str]:
    """Each test that broke the graph or recompiled, grouped by gb_type and location, and by
    function and guard kind."""
    broke = [nodeid for nodeid, record in records.items() if record["graph_breaks"]]
    recompiled = [nodeid for nodeid, record in records.items() if record["recompiles"]]
    if not broke and not recompiled:
        return [f"{len(records)} tests watched: no graph breaks, no recompiles"]
    lines = [f"{len(records)} tests watched: {len(broke)} broke the graph, "
             f"{len(recompiled)} recompiled"]
    breaks = _grouped(records, "breaks", lambda brk: (brk["gb_type"],
                                                      f"{brk['location']}: {brk['line']}"))
    if breaks:
        lines.append("graph breaks, by type and location:")
        lines += _group_lines(breaks)
    recompiles = _grouped(records, "recompiled", lambda event: (event["function"], event["guard"]))
    if recompiles:
        lines.append("recompiles, by function and guard:")
        lines += _group_lines(recompiles)
    return lines


def _grouped(records: dict[str, dict], field: str, key) -> dict[str, dict[str, dict[str, int]]]:
    """{first key: {second key: {nodeid: times}}}, in the order first seen."""
    groups: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for nodeid, record in records.items():
        for item in record[field]:
            outer, inner = key(item)
            tests = groups[outer][inner]
            tests[nodeid] = tests.get(nodeid, 0) + 1
    return groups


def _group_lines(groups: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    lines = []
    for outer, inner_groups in groups.items():
        lines.append(f"  {outer}")
        for inner, tests in inner_groups.items():
            lines.append(f"    {inner}")
            lines += [f"      {nodeid}" + (f" ({times} times)" if times > 1 else "")
                      for nodeid, times in tests.items()]
    return lines


# -- the baseline -------------------------------------------------------------------------------

def load_baseline(path: Path, *, missing_ok: bool = False) -> dict[str, dict]:
    """{nodeid: {"graph_breaks": n, "recompiles": m}} from `path`; UsageError if unusable."""
    if not path.exists():
        if missing_ok:
            return {}
        raise pytest.UsageError(f"--fullgraph-baseline: {path} does not exist; write it with "
                                f"--fullgraph-update-baseline")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise pytest.UsageError(f"--fullgraph-baseline: cannot read {path}: {error}") from None
    if not isinstance(data, dict) or not all(_is_counts(value) for value in data.values()):
        raise pytest.UsageError(f"--fullgraph-baseline: {path} must map each test id to "
                                f'{{"graph_breaks": n, "recompiles": m}}')
    return data


def _is_counts(value: Any) -> bool:
    return (isinstance(value, dict)
            and all(isinstance(value.get(name, 0), int) for name in COUNTS))


def write_baseline(path: Path, baseline: dict[str, dict]) -> None:
    # Sorted, one test a line or so: the file is reviewed in diffs.
    path.write_text(json.dumps(dict(sorted(baseline.items())), indent=2) + "\n", encoding="utf-8")


def increases(baseline: dict[str, dict], counts: dict[str, dict]) -> list[Increase]:
    """Every count that went up; a test missing from the baseline counts as 0 there."""
    found = []
    for nodeid, now in counts.items():
        before = baseline.get(nodeid)
        for name in COUNTS:
            old = None if before is None else before.get(name, 0)
            if now[name] > (old or 0):
                found.append(Increase(nodeid, name, old, now[name]))
    return found
