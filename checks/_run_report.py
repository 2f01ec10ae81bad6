"""A pytest run's compile report: every watched test's report, made where the test ran, merged
into the one report a program's run gives, for report.py's renderers.

The pytest plugin keeps the marker, the options, the baseline and the per-test watching; this is
what `--fullgraph-report` writes, and imported only when it does.
"""

from __future__ import annotations

import json

from ._report_data import compile_report
from .env import environment
from .pytest_plugin import COUNTS

__all__ = ["RunReport"]


class RunReport:
    """The whole run as one compile report, for report.py's renderers (which read `to_dict()`).

    Each test's report is made where the test ran; here the breaks met in several tests become
    one entry (their counts added), the compiles are listed in the order they ran, and "tests"
    gives each test's counts. The data is built by the builder of a program's report, so the two
    have the same fields and shorten paths alike.
    """

    def __init__(self, records: dict[str, dict], command: str, exit_status: int) -> None:
        self.records = {nodeid: record for nodeid, record in records.items() if "report" in record}
        self.command = command
        self.exit_status = exit_status

    def to_dict(self) -> dict:
        reports = [record["report"] for record in self.records.values()]
        breaks = _merged_breaks(self.records)
        return compile_report(
            target=self.command, command=self.command,
            status="ok" if self.exit_status == 0 else f"exit {self.exit_status}", exception=None,
            crash=None, env=environment(),
            packages=dict(sorted({name: version for report in reports
                                  for name, version in report["packages"].items()}.items())),
            dynamo_config={key: value for report in reports
                           for key, value in report["dynamo_config"].items()},
            summary=_merged_summary(reports, len(breaks)),
            graph_breaks=breaks,
            compiles=_merged_compiles(self.records),
            cudagraph_skips=[skip for report in reports for skip in report["cudagraph_skips"]],
            sources=_unique(source for report in reports
                            for source in report["reproduction"]["sources"]),
            tests={nodeid: {name: record[name] for name in COUNTS}
                   for nodeid, record in self.records.items()})


def _merged_summary(reports: list[dict], distinct_breaks: int) -> dict:
    summary = {name: sum(report["summary"][name] for report in reports)
               for name in ("graph_count", "recompiles", "compiles", "limit_hits",
                            "cudagraph_skips")}
    seconds = sum(report["summary"]["compile_seconds"] for report in reports)
    return {**summary, "graph_breaks": distinct_breaks, "compile_seconds": round(seconds, 6)}


def _merged_breaks(records: dict[str, dict]) -> list[dict]:
    """One entry per break site, whichever tests met it; `tests` lists them."""
    merged: dict[tuple, dict] = {}
    for nodeid, record in records.items():
        for brk in record["report"]["graph_breaks"]:
            key = (brk["gb_type"], brk["caused_by"], json.dumps(brk["frames"], sort_keys=True))
            if key in merged:
                merged[key]["count"] += brk["count"]
                merged[key]["tests"].append(nodeid)
            else:
                merged[key] = {**brk, "tests": [nodeid]}
    return list(merged.values())


def _merged_compiles(records: dict[str, dict]) -> list[dict]:
    """Every test's compiles, each with its test, on one clock: the run's first test's start."""
    first = min((record["started"] for record in records.values()), default=0.0)
    compiles = []
    for nodeid, record in records.items():
        offset = record["started"] - first
        for compile_ in record["report"]["compiles"]:
            start = compile_["start"]
            compiles.append({**compile_, "test": nodeid,
                             "start": None if start is None else round(start + offset, 6)})
    return sorted(compiles, key=lambda compile_: compile_["start"] or 0.0)


def _unique(sources) -> list[dict]:
    seen, unique = set(), []
    for source in sources:
        key = (source["filename"], source["lineno"])
        if key not in seen:
            seen.add(key)
            unique.append(source)
    return unique
