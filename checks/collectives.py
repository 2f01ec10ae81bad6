"""Collectives under torch.compile: which ones the graph holds, which ran outside it, and whether
every rank agrees.

A tensor-parallel step compiles well only if its collectives are traced into the graph: an
in-place collective with async_op=True, one behind torch.compiler.disable or in a frame dynamo
skips runs eagerly between graphs, and a rank-dependent branch around a collective gives ranks
different graphs and, at worst, a deadlock. Each rank compiles the function with fullgraph=False
(so every break is seen, as in find_graph_breaks) under a backend that records every FX graph's
collective ops, while one dispatch mode watches every collective that runs: a collective that runs
while no compiled graph is running ran eagerly, whatever API called it.

    find_collectives       one rank, in this process: a fake process group of any world size, or
                           the group already initialised
    run_collective_check   real ranks (gloo or NCCL) in processes of their own
                           (fullgraph.model.launch, driven by _ranks.py), with a timeout; a rank
                           that fails, hangs or crashes is named with its error or stack
    assert_collectives     raises CollectiveError on breaks, uncaptured collectives, unexpected
                           counts, recompiles, failed ranks or ranks that disagree

Collectives run by the autograd engine (a backward pass) are not counted: the backward graph is
AOT autograd's, not one dynamo hands to the backend.

The module is one checker, kept in one file past 500 lines: the rank's report, the watching of one
rank and the assertion over every rank all read the same RankReport, and the assertion's message
lines are a third of its length. What is not the checker already lives elsewhere: the rank processes
in _ranks.py, torch's distributed internals in _compat/distributed.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fullgraph.model.launch import fake_process_group

from . import _compat, _dumps
from ._args import backend_name, check_backend
from ._compat import distributed as torch_distributed
from ._compat import dynamo as torch_dynamo
from ._compat import guard_failures as torch_guard_failures
from ._compat import hooks as torch_hooks
from ._frames import innermost_user_frame, is_user_file, raised_at
from ._message import CheckFailure, Frame, check_msg, counted, format_failure, function_name
from ._target import CALLABLE
from .graph_breaks import OP_KINDS, GraphBreak, find_graph_breaks
from .recompiles import check_count, track_compiles

__all__ = [
    "CapturedGraph",
    "UncapturedCollective",
    "RankReport",
    "CollectiveReport",
    "CollectiveError",
    "find_collectives",
    "run_collective_check",
    "assert_collectives",
]
# Not exported: check_rank, the check each rank's process runs (_ranks.py).


# -- reports ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CapturedGraph:
    """One FX graph dynamo handed to the backend. `signature` hashes its op sequence (targets,
    not constants), so two ranks' graphs can be compared without shipping them."""

    compile_id: str
    ops: int
    collectives: tuple[str, ...]  # kinds, in graph order
    sites: tuple[Frame | None, ...]  # the user line each collective was traced from
    signature: str

    def to_dict(self) -> dict:
        return {"compile_id": self.compile_id, "ops": self.ops,
                "collectives": list(self.collectives),
                "sites": [site.to_dict() if site else None for site in self.sites],
                "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict) -> CapturedGraph:
        sites = tuple(Frame(**site) if site else None for site in data["sites"])
        return cls(data["compile_id"], data["ops"], tuple(data["collectives"]), sites,
                   data["signature"])


@dataclass(frozen=True)
class UncapturedCollective:
    """A collective that ran eagerly, outside every compiled graph, `count` times from `frame`
    (the innermost user frame that called it; None if no user code was on the stack)."""

    kind: str
    op: str  # the op that ran: "c10d::allreduce_", "_c10d_functional::all_reduce", ...
    frame: Frame | None
    count: int = 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "op": self.op, "count": self.count,
                "frame": self.frame.to_dict() if self.frame else None}

    @classmethod
    def from_dict(cls, data: dict) -> UncapturedCollective:
        frame = Frame(**data["frame"]) if data["frame"] else None
        return cls(data["kind"], data["op"], frame, data["count"])


@dataclass(frozen=True)
class RankReport:
    """What one rank compiled and ran.

    status: "ok" (the call returned), "failed" (it raised), "timed out" (still running at the
    timeout), "stopped" (ended by the launcher after another rank failed) or "crashed" (exited
    without a report). `error` says why for the last four, `where` is the user line it raised or
    was stuck at, `detail` its traceback, stack or output. `sequence` lists every collective the
    call ran, in order, in a graph or not.
    """

    rank: int
    status: str
    graphs: tuple[CapturedGraph, ...] = ()
    breaks: tuple[GraphBreak, ...] = ()
    uncaptured: tuple[UncapturedCollective, ...] = ()
    recompiles: tuple[str, ...] = ()
    sequence: tuple[str, ...] = ()
    error: str | None = None
    where: Frame | None = None
    detail: str = dataclasses.field(default="", repr=False)

    @property
    def captured(self) -> dict[str, int]:
        """How many collectives of each kind the graphs hold, over every graph."""
        return dict(Counter(kind for graph in self.graphs for kind in graph.collectives))

    @property
    def graph_break_count(self) -> int:
        """Breaks, not counting torch.compiler.disable'd calls (their collectives are uncaptured)."""
        return sum(not brk.disabled for brk in self.breaks)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "status": self.status,
                "graphs": [graph.to_dict() for graph in self.graphs],
                "breaks": [brk.to_dict() for brk in self.breaks],
                "uncaptured": [call.to_dict() for call in self.uncaptured],
                "recompiles": list(self.recompiles), "sequence": list(self.sequence),
                "captured": self.captured, "error": self.error,
                "where": self.where.to_dict() if self.where else None, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict) -> RankReport:
        return cls(
            rank=data["rank"], status=data["status"],
            graphs=tuple(CapturedGraph.from_dict(graph) for graph in data["graphs"]),
            breaks=tuple(_break_from_dict(brk) for brk in data["breaks"]),
            uncaptured=tuple(UncapturedCollective.from_dict(call) for call in data["uncaptured"]),
            recompiles=tuple(data["recompiles"]), sequence=tuple(data["sequence"]),
            error=data["error"], where=Frame(**data["where"]) if data["where"] else None,
            detail=data["detail"])


def _break_from_dict(data: dict) -> GraphBreak:
    return GraphBreak(**{**data, "hints": tuple(data["hints"]),
                         "frames": tuple(Frame(**frame) for frame in data["frames"])})


@dataclass(frozen=True)
class CollectiveReport:
    """Every rank's report for one function: all ranks from run_collective_check, the one rank
    of this process from find_collectives. `process_group` is the backend ("fake", "gloo",
    "nccl") and `backend` the compile backend."""

    function: str
    backend: str
    process_group: str
    world_size: int
    ranks: tuple[RankReport, ...]

    @property
    def failed(self) -> tuple[RankReport, ...]:
        return tuple(rank for rank in self.ranks if rank.status != "ok")

    @property
    def consistent(self) -> bool:
        """Whether the ranks ran one collective sequence and compiled one set of graphs. A rank
        that did not finish agrees if what it did so far is the start of the others'."""
        return not _disagree(self, _sequence_key) and not _disagree(self, _graphs_key)

    def to_dict(self) -> dict:
        return {"function": self.function, "backend": self.backend,
                "process_group": self.process_group, "world_size": self.world_size,
                "consistent": self.consistent, "ranks": [rank.to_dict() for rank in self.ranks]}

    def __str__(self) -> str:
        headline = f"{self.function} (backend {self.backend}) on {_where_run(self)}"
        entries = [[f"rank {rank.rank}: {_rank_summary(rank)}", rank.error or ""]
                   for rank in self.ranks]
        if len(self.ranks) > 1:
            agree = "agree" if self.consistent else "disagree"
            entries.append([f"the ranks {agree} on the collective sequence and the graphs"])
        return format_failure(headline, entries)


class CollectiveError(CheckFailure):
    """A collective check failed; `.report` is the CollectiveReport."""


def _rank_summary(rank: RankReport) -> str:
    if rank.status != "ok":
        return rank.status
    ops = ", ".join(str(graph.ops) for graph in rank.graphs) or "no"
    captured = ", ".join(f"{kind} x{count}" for kind, count in rank.captured.items()) or "none"
    eager = sum(call.count for call in rank.uncaptured)
    return (f"{counted(len(rank.graphs), 'graph')} ({ops} ops); captured {captured}; "
            f"{counted(rank.graph_break_count, 'graph break')}; "
            f"{counted(eager, 'uncaptured collective')}; "
            f"{counted(len(rank.recompiles), 'recompile')}")


def _where_run(report: CollectiveReport) -> str:
    if len(report.ranks) == 1 and report.world_size > 1:
        return f"rank {report.ranks[0].rank} of {report.world_size} ({report.process_group})"
    return f"{counted(report.world_size, 'rank')} ({report.process_group})"


# -- one rank, in this process ---------------------------------------------------------------------

def find_collectives(fn: Callable, *args: Any, world_size: int | None = None, rank: int = 0,
                     backend: str | Callable = "eager", **kwargs: Any) -> CollectiveReport:
    """Compile `fn`, call it once with args and kwargs, and report its collectives on this rank.

    world_size: run under torch's fake process group of that size, as `rank`, created and
    destroyed here (no group may be initialised already); collectives return at once without
    communicating, so values are wrong but graphs are a real rank's. None: use the process group
    already initialised (a fake one you created, or a real one: this rank only).

    Dynamo is reset before and after, and torch's config, stance, logging and counters are left
    as found. An exception from the call is kept in the report (status "failed"), not raised.
    """
    check_backend("find_collectives", backend)
    if world_size is None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("find_collectives: world_size is None but no process group is "
                             "initialised; pass world_size=N for a fake one")
        if rank != 0:
            raise ValueError("find_collectives: rank applies to a fake group (world_size=N); "
                             "with an initialised group the rank is the group's")
        return _report_this_rank(fn, args, kwargs, backend=backend)
    _check_positive_int("world_size", world_size)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"find_collectives: rank must be an int in [0, {world_size}), got {rank!r}")
    if not dist.is_available():
        raise _compat.Unavailable(f"torch.distributed is not available in torch {torch.__version__}")
    if dist.is_initialized():
        raise ValueError("find_collectives: a process group is already initialised; pass "
                         "world_size=None to check on it")
    with fake_process_group(world_size, rank=rank):
        return _report_this_rank(fn, args, kwargs, backend=backend)


def _report_this_rank(fn: Callable, args: tuple, kwargs: dict, *, backend: str | Callable
                      ) -> CollectiveReport:
    name, report = check_rank(fn, args, kwargs, backend=backend)
    return CollectiveReport(name, backend_name(backend), dist.get_backend(),
                            dist.get_world_size(), (report,))


# Called with the function's name ({"function": ...}), each graph captured ({"graph": ...}) and
# each collective started ({"ran": kind}), as it happens: what a rank that never finishes did
# before it hung.
_Progress = Callable[[dict], None]


class _Runs:
    """Watches collectives as they run; knows whether a compiled graph is running."""

    def __init__(self, progress: _Progress | None) -> None:
        self.graph_depth = 0
        self.sequence: list[str] = []
        self.eager: Counter[tuple[str, str, Frame | None]] = Counter()
        self.progress = progress

    def marked(self, compiled: Callable) -> Callable:
        """`compiled`, counting as a graph run while it runs."""

        def run(*args: Any) -> Any:
            self.graph_depth += 1
            try:
                return compiled(*args)
            finally:
                self.graph_depth -= 1

        # Keep the calling convention: dynamo passes a boxed backend's arguments as one list.
        if getattr(compiled, "_boxed_call", False):
            run._boxed_call = True
        return run

    def see(self, op: Any) -> None:
        kind = torch_distributed.collective_kind(op)
        if kind is None or torch_hooks.in_backward():
            return
        self.sequence.append(kind)
        if self.progress is not None:
            self.progress({"ran": kind})
        if not self.graph_depth:
            self.eager[(kind, torch_distributed.op_name(op), _innermost_user_frame())] += 1

    def uncaptured(self) -> tuple[UncapturedCollective, ...]:
        return tuple(UncapturedCollective(kind, op, frame, count)
                     for (kind, op, frame), count in self.eager.items())


def check_rank(fn: Callable, args: tuple, kwargs: dict, *, backend: str | Callable,
               progress: _Progress | None = None) -> tuple[str, RankReport]:
    """(fn's name, this rank's report) for one compiled call of fn."""
    compiler = torch_dynamo.lookup_backend(backend) if isinstance(backend, str) else backend
    graphs: list[CapturedGraph] = []
    runs = _Runs(progress)
    if progress is not None:
        progress({"function": function_name(fn)})

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(_captured_graph(gm))
        if progress is not None:
            progress({"graph": graphs[-1].to_dict()})
        return runs.marked(compiler(gm, example_inputs))

    with track_compiles() as compiles, torch_hooks.observe_ops(runs.see):
        found = find_graph_breaks(fn, *args, backend=record, **kwargs)
    error = where = None
    detail = ""
    if found.error is not None:
        error = f"{type(found.error).__name__}: {found.error}"
        where = raised_at(found.error, with_source=True)
        detail = "".join(traceback.format_exception(found.error))
    report = RankReport(
        rank=dist.get_rank(), status="ok" if found.error is None else "failed",
        graphs=tuple(graphs), breaks=found.breaks, uncaptured=runs.uncaptured(),
        recompiles=tuple(_describe_recompile(event) for event in compiles.recompiles),
        sequence=tuple(runs.sequence), error=error, where=where, detail=detail)
    return found.function, report


def _captured_graph(gm: torch.fx.GraphModule) -> CapturedGraph:
    # Higher-order ops (checkpoint, cond) keep their bodies as submodules: look inside those too.
    nodes = [node for module in gm.modules() if isinstance(module, torch.fx.GraphModule)
             for node in module.graph.nodes if node.op in OP_KINDS]
    collectives = [(kind, node) for node in nodes if node.op == "call_function"
                   for kind in [torch_distributed.collective_kind(node.target)] if kind is not None]
    targets = "\n".join(f"{node.op} {_target_name(node.target)}" for node in nodes)
    return CapturedGraph(
        compile_id=torch_dynamo.current_compile_id() or "?",
        ops=sum(node.op in OP_KINDS for node in gm.graph.nodes),
        collectives=tuple(kind for kind, _ in collectives),
        sites=tuple(_traced_from(node) for _, node in collectives),
        signature=hashlib.sha1(targets.encode()).hexdigest()[:12])


def _traced_from(node: torch.fx.Node) -> Frame | None:
    """The innermost user frame of the stack dynamo recorded for a node."""
    frames = torch_guard_failures.stack_frames(node.meta.get("stack_trace") or "")
    return innermost_user_frame(frames, with_source=True)


def _target_name(target: Any) -> str:
    # str() of a Python function or a bound builtin includes its address, which differs between
    # processes; the qualified name does not.
    qualname = getattr(target, "__qualname__", None)
    return f"{getattr(target, '__module__', '')}.{qualname}" if qualname else str(target)


def _describe_recompile(event: Any) -> str:
    reason = event.failures[0].describe() if event.failures else (event.error or "no reason given")
    return f"{event.compile_id} of {event.function.location()}: {reason}"


def _innermost_user_frame() -> Frame | None:
    frame = sys._getframe(1)
    while frame is not None and not is_user_file(frame.f_code.co_filename, with_source=True):
        frame = frame.f_back
    if frame is None:
        return None
    return Frame.at(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)




# -- real ranks, in processes of their own ---------------------------------------------------------

def run_collective_check(target: str | Callable, *, world_size: int = 2,
                         dist_backend: str = "gloo", backend: str = "eager",
                         timeout: float = 60.0) -> CollectiveReport:
    """Start `world_size` ranks, each running find_collectives on what `target` returns, and
    collect every rank's report; never hangs longer than `timeout` seconds.

    target: "module:function", or a function defined at the top level of an importable module.
    Each rank calls it with no arguments once its process group (`dist_backend`, on a file store:
    no ports) is up; it returns the function to check and its arguments, `(fn, args)` or
    `(fn, args, kwargs)`. Ranks get this process's sys.path, one CPU thread per rank's share of
    the cores, and, under NCCL, GPU `rank`.

    A rank that raises is reported with its traceback; once one has failed the others get a few
    seconds to finish or fail on their own, then are stopped. Ranks still running at the timeout
    are reported as timed out, with the line each was stuck at (a faulthandler dump), and killed
    with every process they started. The ranks are started by fullgraph.model.launch: they die
    with this process even if it is killed outright, and SIGINT or SIGTERM to it reaches them.
    POSIX only.
    """
    target = _target_spec(target)
    _check_positive_int("world_size", world_size)
    if not isinstance(dist_backend, str):
        raise TypeError(f"run_collective_check: dist_backend must be a str, got {dist_backend!r}")
    if not isinstance(backend, str):
        raise TypeError("run_collective_check: backend must be a backend name (ranks are other "
                        f"processes), got {type(backend).__name__}")
    check_backend("run_collective_check", backend)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"run_collective_check: timeout must be a number, got {timeout!r}")
    if timeout <= 0:
        raise ValueError(f"run_collective_check: timeout must be > 0, got {timeout!r}")
    # The ranks' module imports this one for the reports and the check each rank runs.
    from ._ranks import run_ranks

    ranks = run_ranks(target, world_size=world_size, dist_backend=dist_backend, backend=backend,
                      timeout=timeout)
    function = next((name for name, _ in ranks if name), target.partition(":")[2])
    return CollectiveReport(function, backend, dist_backend, world_size,
                            tuple(report for _, report in ranks))


def _target_spec(target: str | Callable) -> str:
    if isinstance(target, str):
        if not CALLABLE.fullmatch(target):
            raise ValueError(f"run_collective_check: target must be 'module:function', got {target!r}")
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not callable(target) or not module or module == "__main__" or "<" in qualname:
        raise TypeError("run_collective_check: target must be 'module:function' or a top-level "
                        f"function of an importable module, got {target!r}")
    return f"{module}:{qualname}"


# -- the assertion -------------------------------------------------------------------------------

def assert_collectives(report: CollectiveReport, *, expected: dict[str, int] | None = None,
                       max_breaks: int = 0, max_recompiles: int = 0, same_graphs: bool = True,
                       msg: str | None = None) -> CollectiveReport:
    """Raise CollectiveError unless every rank finished, ran every collective inside a compiled
    graph, broke and recompiled no more than allowed, and agreed with the others on the
    collective sequence and (with same_graphs) on the graphs; return the report otherwise.

    expected: collective kind -> how many each rank's graphs must hold ({"all_reduce": 4});
    kinds not named must not appear. None: counts are not checked.
    torch.compiler.disable'd calls are not counted as breaks; their collectives are uncaptured.
    """
    __tracebackhide__ = True
    if not isinstance(report, CollectiveReport):
        raise TypeError(f"assert_collectives: report must be a CollectiveReport, got "
                        f"{type(report).__name__}")
    _check_expected(expected)
    check_count("assert_collectives: max_breaks", max_breaks)
    check_count("assert_collectives: max_recompiles", max_recompiles)
    if not isinstance(same_graphs, bool):
        raise TypeError(f"assert_collectives: same_graphs must be a bool, got {same_graphs!r}")
    check_msg("assert_collectives", msg)
    problems = _problems(report, expected=expected, max_breaks=max_breaks,
                         max_recompiles=max_recompiles, same_graphs=same_graphs)
    if problems:
        limits = {"max_breaks": max_breaks, "max_recompiles": max_recompiles}
        raise CollectiveError(_failure_message(report, problems, limits, msg), report)
    return report


@dataclass
class _Problem:
    """One numbered entry of the failure message: the same lines on several ranks are one."""

    category: str
    lines: list[str]
    ranks: list[int]


def _problems(report: CollectiveReport, *, expected: dict[str, int] | None, max_breaks: int,
              max_recompiles: int, same_graphs: bool) -> list[_Problem]:
    found: dict[tuple, _Problem] = {}

    def add(category: str, rank: int | None, lines: list[str]) -> None:
        key = (category, tuple(lines))
        problem = found.setdefault(key, _Problem(category, lines, []))
        if rank is not None:
            problem.ranks.append(rank)

    for rank in report.ranks:
        if rank.status != "ok":
            add("failed", rank.rank, _failure_lines(rank))
            continue
        for call in rank.uncaptured:
            add("uncaptured", rank.rank, _uncaptured_lines(call))
        if rank.graph_break_count > max_breaks:
            eager_lines = {(call.frame.filename, call.frame.lineno)
                           for call in rank.uncaptured if call.frame}
            for brk in rank.breaks:
                if not brk.disabled:
                    near = (brk.location.filename, brk.location.lineno) in eager_lines
                    add("breaks", rank.rank, _break_lines(brk, near_collective=near))
        if len(rank.recompiles) > max_recompiles:
            for recompile in rank.recompiles:
                add("recompiles", rank.rank, [f"recompile {recompile}"])
        if expected is not None and rank.captured != {k: n for k, n in expected.items() if n}:
            add("counts", rank.rank, _count_lines(rank, expected))
    if _disagree(report, _sequence_key):
        add("sequence", None, _disagreement_lines(report, _sequence_key, "collective sequences"))
    if same_graphs and _disagree(report, _graphs_key):
        add("graphs", None, _disagreement_lines(report, _graphs_key, "sets of graphs"))
    return list(found.values())


def _failure_lines(rank: RankReport) -> list[str]:
    where = f" at {rank.where.location()}" if rank.where else ""
    if rank.status == "failed":
        return [f"failed{where}: {rank.error}", rank.where.line if rank.where else ""]
    if rank.status == "crashed":
        return [f"crashed: {rank.error}", *rank.detail.splitlines()[-3:]]
    lines = [f"{rank.error}{where}", rank.where.line if rank.where else ""]
    # A rank that did not finish: its detail is its main thread's stack, from a faulthandler dump.
    innermost = next(reversed(_dumps.frames(rank.detail)), None)
    if innermost and not is_user_file(innermost[0], with_source=True):
        filename, line, function = innermost
        lines.append(f"waiting in {os.path.basename(filename)}:{line} in {function}")
    if rank.sequence:
        lines.append(f"the last collective it started: {rank.sequence[-1]} "
                     f"(#{len(rank.sequence)})")
    return lines


def _uncaptured_lines(call: UncapturedCollective) -> list[str]:
    where = f"{call.frame.location()}: " if call.frame else ""
    times = f" ({call.count} times)" if call.count > 1 else ""
    return [f"{where}{call.kind} ran eagerly, outside every compiled graph{times}",
            call.frame.line if call.frame else "", f"op {call.op}"]


def _break_lines(brk: GraphBreak, *, near_collective: bool) -> list[str]:
    # A break whose reason names the collective machinery (async_op=True, Work.wait), or one on
    # the line of an uncaptured collective (dist.broadcast builds options dynamo cannot trace).
    collective = near_collective or torch_distributed.mentions_collectives(
        f"{brk.gb_type}\n{brk.reason}")
    tag = " (collective)" if collective else ""
    lines = [f"{brk.location.location()}: graph break{tag}: {brk.gb_type}", brk.location.line]
    lines += [f"called from {frame.location()}" for frame in reversed(brk.frames[:-1])]
    lines.append(brk.explanation.splitlines()[0] if brk.explanation else "")
    return lines


def _count_lines(rank: RankReport, expected: dict[str, int]) -> list[str]:
    kinds = dict.fromkeys([*expected, *rank.captured])
    counts = ", ".join(f"{kind} x{rank.captured.get(kind, 0)} (expected {expected.get(kind, 0)})"
                       for kind in kinds if rank.captured.get(kind, 0) != expected.get(kind, 0))
    return [f"the graphs capture {counts}", *(_graph_line(graph) for graph in rank.graphs)]


def _sequence_key(rank: RankReport) -> tuple:
    return rank.sequence


def _graphs_key(rank: RankReport) -> tuple:
    return tuple(graph.signature for graph in rank.graphs)


def _disagree(report: CollectiveReport, key: Callable[[RankReport], tuple]) -> bool:
    """Whether two ranks differ by `key`: finished ranks must match exactly, and what a rank that
    did not finish got through must be the start of a finished rank's (or of the longest)."""
    finished = {key(rank) for rank in report.ranks if rank.status == "ok"}
    if len(finished) > 1:
        return True
    everyone = [key(rank) for rank in report.ranks]
    reference = next(iter(finished)) if finished else max(everyone, key=len, default=())
    return any(value != reference[:len(value)] for value in everyone)


def _disagreement_lines(report: CollectiveReport, key: Callable[[RankReport], tuple],
                        what: str) -> list[str]:
    groups: dict[tuple, list[RankReport]] = {}
    for rank in report.ranks:
        groups.setdefault((key(rank), rank.status == "ok"), []).append(rank)
    verb = "ran" if key is _sequence_key else "compiled"
    lines = [f"the ranks {verb} {len({value for value, _ in groups})} different {what}"]
    for (_, finished), ranks in groups.items():
        label = _rank_label([rank.rank for rank in ranks])
        label += "" if finished else " (until it stopped)"
        if key is _sequence_key:
            lines.append(f"{label}: {_kinds(ranks[0].sequence)}")
        else:
            lines += [f"{label}: {counted(len(ranks[0].graphs), 'graph')}",
                      *(f"  {_graph_line(graph)}" for graph in ranks[0].graphs)]
    return lines


def _graph_line(graph: CapturedGraph) -> str:
    # One item per collective and line, in graph order: a layer loop's calls are one item.
    calls = Counter(zip(graph.collectives, graph.sites))
    items = ", ".join(f"{kind}{f' x{count}' if count > 1 else ''}"
                      f"{f' ({site.location()})' if site else ''}"
                      for (kind, site), count in calls.items())
    return f"graph {graph.compile_id}: {graph.ops} ops, {items or 'no collectives'}"


def _kinds(kinds: tuple[str, ...]) -> str:
    return ", ".join(kinds) if kinds else "no collectives"


# {counted} is the number of entries of the category with its noun in _COUNTED.
_HEADLINES = {
    "failed": "{counted} did not finish",
    "uncaptured": "{counted} ran outside the graph (limit 0)",
    "breaks": "{counted} (limit {max_breaks})",
    "recompiles": "{counted} (limit {max_recompiles})",
    "counts": "unexpected collective counts",
    "sequence": "ranks disagree on the collective sequence",
    "graphs": "ranks compiled different graphs",
}
_COUNTED = {"failed": "rank", "uncaptured": "collective", "breaks": "graph break",
            "recompiles": "recompile"}
_HINTS = {
    "failed": "A rank that fails or hangs leaves the others waiting in a collective: start with "
              "the first error; the traceback or stack of each rank is in .report.",
    "uncaptured": "Call collectives through torch.distributed._functional_collectives, or "
                  "torch.distributed with async_op=False, outside torch.compiler.disable'd "
                  "code, so that dynamo traces them into the graph.",
    "sequence": "Every rank must issue the same collectives in the same order: do not branch on "
                "the rank (or on data that differs between ranks) around a collective.",
    "graphs": "Ranks that compile different graphs diverge in time and memory: keep "
              "rank-dependent Python out of the compiled function, or pass same_graphs=False.",
}


def _failure_message(report: CollectiveReport, problems: list[_Problem], limits: dict[str, int],
                     msg: str | None) -> str:
    counts = Counter(problem.category for problem in problems)
    parts = [_HEADLINES[category].format(counted=counted(count, _COUNTED.get(category, "")),
                                         **limits)
             for category, count in counts.items()]
    headline = f"{'; '.join(parts)} in {report.function} on {_where_run(report)}"
    entries = [[f"{_rank_label(problem.ranks)}: {problem.lines[0]}" if problem.ranks
                else problem.lines[0], *problem.lines[1:]] for problem in problems]
    hints = [_HINTS[category] for category in counts if category in _HINTS]
    return format_failure(headline, entries, " ".join(hints) or None, msg)


def _rank_label(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


# -- argument checks -------------------------------------------------------------------------------

def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")



def _check_expected(expected: Any) -> None:
    if expected is None:
        return
    if not isinstance(expected, dict):
        raise TypeError(f"assert_collectives: expected must be a dict of kind -> count, got "
                        f"{type(expected).__name__}")
    for kind, count in expected.items():
        if kind not in torch_distributed.COLLECTIVE_KINDS:
            raise ValueError(f"assert_collectives: expected names an unknown collective {kind!r}; "
                             f"kinds are {sorted(torch_distributed.COLLECTIVE_KINDS)}")
        check_count(f"assert_collectives: expected[{kind!r}]", count)
