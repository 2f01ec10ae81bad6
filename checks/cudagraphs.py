"""Prove that CUDA graphs apply under mode="reduce-overhead": recorded once, replayed, no skips.

torch.compile(mode="reduce-overhead") hands each graph to inductor's cudagraph trees. A graph
inductor cannot capture (it mutates an input with no static address, reads a CPU tensor, holds an
op CUDA graphs cannot replay) is skipped: it runs without CUDA graphs, and torch says so once, as
a log warning most runs never show. A graph it can capture runs eagerly once (the warmup), is
recorded on a later call, and is replayed from then on, for every call whose inputs have the
shapes it was recorded with. A new shape is a new recording, and every recording keeps its share
of a private memory pool for as long as the compiled function lives: a sweep of prompt lengths
can record dozens of graphs and hold their memory.

    report = cudagraph_report(decode, calls)          # frozen, printable, to_dict()
    assert_cudagraphs(decode, calls, max_recordings=1) # raises CudaGraphError
    with track_cudagraphs() as seen:                   # code that compiles by itself
        generate(...)
    seen.report()

Where the facts come from (all through _compat): recordings, replays, warmups and calls run
without CUDA graphs from cudagraph trees' manager, patched for the duration; skips from the
warning inductor logs for each and from its skip counter (a graph on the CPU is counted without a
message); memory from the caching allocator's reserved bytes, which include the private pool.

The module is one checker, kept in one file a little past 500 lines: the report, the tracker that
fills it and the assertion over it share the Recording and CudaGraphSkip types; the hooks into
cudagraph trees are in _compat/cudagraphs.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch

from ._compat import cudagraphs as torch_cudagraphs
from ._compat import dynamo as torch_dynamo
from ._frames import user_frame_in
from ._matrix import tensors_in
from ._message import CheckFailure, Frame, counted, format_failure, function_name
from ._state import preserved_torch_state
from .recompiles import calls_of, check_count
from .watch import SkipRecorder

__all__ = [
    "Recording",
    "CudaGraphSkip",
    "CudaGraphReport",
    "CudaGraphTracker",
    "CudaGraphError",
    "track_cudagraphs",
    "cudagraph_report",
    "assert_cudagraphs",
]

MIB = 2**20
_NO_CUDA = "torch sees no CUDA device"
# A failure lists this many recordings; a long sweep's are summed up after them.
_LISTED_RECORDINGS = 10


class CudaGraphError(CheckFailure):
    """CUDA graphs were skipped, recorded too often, never recorded, or memory grew."""


@dataclass(frozen=True)
class Recording:
    """One CUDA graph that cudagraph trees recorded.

    inputs: the shape of each tensor input without a static address and each int input (the
    sizes of a dynamic-shape graph): one recording per distinct value. memory_bytes: what
    cudagraph trees' private memory pool grew by since the previous recording (or the start), its
    warmup included; the pool keeps it for as long as the compiled function lives. None where
    torch cannot tell the pool's segments apart. call: the call of the checked function, counted
    from 1, that recorded it (None under track_cudagraphs).
    """

    graph_id: int | None
    compile_id: str | None
    inputs: tuple[tuple[int, ...] | int, ...]
    memory_bytes: int | None
    replays: int
    call: int | None

    def describe_inputs(self) -> str:
        return ", ".join(str(value) for value in self.inputs) or "no varying inputs"

    def to_dict(self) -> dict:
        return {"graph_id": self.graph_id, "compile_id": self.compile_id,
                "inputs": [list(value) if isinstance(value, tuple) else value for value in self.inputs],
                "memory_bytes": self.memory_bytes, "replays": self.replays, "call": self.call}


# What inductor does without a message: a graph with no CUDA tensor is counted as skipped.
NOT_ON_CUDA = "not on CUDA"

_SKIP_HINTS = {
    "mutated inputs": "A graph that writes in place to an input copied into a static buffer before "
                      "each replay is not recorded: mark the input with "
                      "torch._dynamo.mark_static_address(t) if it keeps its address between calls "
                      "(a preallocated KV cache), or return the new value instead of writing it.",
    "input storage mutation": "set_() on an input swaps its storage: CUDA graphs cannot replay "
                              "that; copy into the input instead.",
    "CPU tensors": "Move every tensor the graph reads to the GPU before the call; a CPU scalar "
                   "can be passed as a Python number.",
    "multiple devices": "Keep every tensor of the graph on one CUDA device.",
    "incompatible op": "An op CUDA graphs cannot capture (a host sync such as .item() or "
                       ".nonzero(), a CPU op): move it out of the compiled function.",
    "dynamic shapes": "cudagraph_skip_dynamic_graphs is on: pad inputs to fixed sizes, or turn it "
                      "off to record one graph per size.",
    "non-tensor inputs": "Pass tensors, ints and generators only to the compiled graph.",
    "re-record limit": "A static input keeps changing address, so the graph is recorded again and "
                       "again: keep parameters and marked tensors in place between calls.",
    "caching allocator off": "CUDA graphs need PyTorch's caching allocator: unset "
                             "PYTORCH_NO_CUDA_MEMORY_CACHING.",
    NOT_ON_CUDA: "CUDA graphs apply to CUDA tensors only: move the inputs to the GPU.",
}
_RECORDINGS_HINT = ("Each distinct input shape records a graph of its own and keeps its memory, "
                    "with dynamic shapes too: pad lengths to a few buckets (multiples of 64, powers "
                    "of two) so the graphs are few and reused.")
_NO_RECORDING_HINT = ("A graph runs eagerly on its first call (the warmup) and is recorded on a "
                      "later one: call it at least twice with the same shapes.")
_MEMORY_HINT = ("Memory grew after warmup: a new recording (a new shape) or tensors kept alive "
                "between calls; outputs of a replay are overwritten by the next one, clone what "
                "you keep rather than holding graphs' outputs.")


@dataclass(frozen=True)
class CudaGraphSkip:
    """One graph inductor ran without CUDA graphs, with torch's reason.

    kind: mutated inputs, input storage mutation, CPU tensors, multiple devices, incompatible op,
    dynamic shapes, non-tensor inputs, re-record limit, caching allocator off, not on CUDA (a
    graph with no CUDA tensor, counted without a message) or other. where: the user line torch
    found the reason at, when it says.
    """

    kind: str
    message: str  # torch's message, first line
    where: Frame | None
    text: str  # torch's message, verbatim, stack trace included

    @property
    def hint(self) -> str | None:
        return _SKIP_HINTS.get(self.kind)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message,
                "where": self.where.to_dict() if self.where else None, "text": self.text}


def parse_skip(text: str) -> CudaGraphSkip:
    """A CudaGraphSkip from one message inductor logged ("skipping cudagraphs due to ...")."""
    message, stack = torch_cudagraphs.split_skip_message(text)
    kind = torch_cudagraphs.skip_kind(message)
    return CudaGraphSkip(kind, message.splitlines()[0] if message else text, user_frame_in(stack), text)


def _unlogged_skips(count: int) -> list[CudaGraphSkip]:
    if count <= 0:
        return []
    message = (f"{counted(count, 'graph')} skipped without a message: inductor counts a graph "
               f"with no CUDA tensor this way")
    return [CudaGraphSkip(NOT_ON_CUDA, message, None, message)]


@dataclass(frozen=True)
class CudaGraphReport:
    """What CUDA graphs did over the calls of one function (or one track_cudagraphs block).

    status: "applied" (recorded, nothing skipped), "partly skipped" (recorded, something
    skipped), "skipped" (skipped, nothing recorded), "not recorded" (every call a warmup) or
    "not applicable" (no CUDA device: nothing was run; `reason` says why).
    calls: calls of the checked function (None under track_cudagraphs). graph_runs: calls that
    cudagraph trees ran, one per call of each CUDA-graph-wrapped graph: `warmups`, recordings,
    `replays` and `eager_runs` (run without CUDA graphs after a skip) add up to it.
    memory_growth_bytes: reserved device memory after the last call minus after `warmup` calls
    (None if the sweep was shorter, or nothing ran). overwritten_outputs: calls that returned a
    tensor in the memory of the previous call's output while that was still referenced: what you
    keep of a call's outputs must be cloned.
    """

    function: str
    status: str
    recordings: tuple[Recording, ...]
    replays: int
    warmups: int
    eager_runs: int
    skips: tuple[CudaGraphSkip, ...]
    skip_count: int
    calls: int | None
    warmup: int
    memory_growth_bytes: int | None
    overwritten_outputs: int = 0
    reason: str = ""

    @property
    def applicable(self) -> bool:
        return self.status != "not applicable"

    @property
    def graph_runs(self) -> int:
        return self.warmups + len(self.recordings) + self.replays + self.eager_runs

    def recordings_by_inputs(self) -> dict[tuple[tuple[int, ...] | int, ...], int]:
        """How many graphs were recorded for each distinct set of inputs, in the order first seen."""
        return dict(Counter(recording.inputs for recording in self.recordings))

    def summary(self) -> str:
        if not self.applicable:
            return f"{self.function}: CUDA graphs not applicable: {self.reason}"
        calls = f" over {counted(self.calls, 'call')}" if self.calls is not None else ""
        return (f"{self.function}: CUDA graphs {self.status}{calls}: "
                f"{counted(len(self.recordings), 'recording')}, {counted(self.replays, 'replay')}, "
                f"{counted(self.warmups, 'warmup')}, {counted(self.eager_runs, 'eager run')}, "
                f"{counted(self.skip_count, 'skip')}; {self._memory_text()}")

    def _memory_text(self) -> str:
        if self.memory_growth_bytes is None:
            return "memory growth not measured"
        after = f"after {counted(self.warmup, 'warmup call')}" if self.calls is not None else "in the block"
        return f"memory {_mib(self.memory_growth_bytes, sign=True)} {after}"

    def __str__(self) -> str:
        lines = [self.summary()]
        for number, recording in enumerate(self.recordings, start=1):
            lines.append(f"  recording {number}{_at_call(recording)}: inputs "
                         f"{recording.describe_inputs()}; {_mib(recording.memory_bytes)} pool, "
                         f"{counted(recording.replays, 'replay')}")
        for skip in self.skips:
            where = f" at {skip.where.location()}" if skip.where else ""
            lines.append(f"  skipped, {skip.kind}{where}: {skip.message}")
        if self.overwritten_outputs:
            lines.append(f"  {counted(self.overwritten_outputs, 'call')} returned outputs in the "
                         f"memory of the previous call's: clone what you keep")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"function": self.function, "status": self.status, "reason": self.reason,
                "calls": self.calls, "graph_runs": self.graph_runs, "warmup": self.warmup,
                "recordings": [recording.to_dict() for recording in self.recordings],
                "replays": self.replays, "warmups": self.warmups, "eager_runs": self.eager_runs,
                "skips": [skip.to_dict() for skip in self.skips], "skip_count": self.skip_count,
                "memory_growth_bytes": self.memory_growth_bytes,
                "overwritten_outputs": self.overwritten_outputs}


def _mib(size: int | None, *, sign: bool = False) -> str:
    if size is None:
        return "unknown MiB"
    return f"{size / MIB:+.1f} MiB" if sign else f"{size / MIB:.1f} MiB"


def _at_call(recording: Recording) -> str:
    return f" at call {recording.call}" if recording.call is not None else ""


def _growth(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def _status(recordings: int, skips: int) -> str:
    if not torch.cuda.is_available():
        return "not applicable"
    if recordings:
        return "partly skipped" if skips else "applied"
    return "skipped" if skips else "not recorded"


# -- collecting ----------------------------------------------------------------------------------

class CudaGraphTracker:
    """What cudagraph trees did inside a `track_cudagraphs` block; `report()` at any time, final
    after the block."""

    def __init__(self, function: str, *, warmup: int, device: int | None) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._tree_calls: list[tuple[torch_cudagraphs.TreeCall, int | None]] = []
        self._skips = SkipRecorder()
        self._call: int | None = None
        self._warmup = warmup
        self._device = device
        self._baseline: int | None = None
        self._pool_at_start: int | None = None
        self._final: CudaGraphReport | None = None
        self._output_ptrs: set[int] = set()
        self._kept_outputs: list[torch.Tensor] = []
        self._overwritten = 0

    def report(self) -> CudaGraphReport:
        if self._final is not None:
            return self._final
        with self._lock:
            tree_calls = list(self._tree_calls)
        outcomes = Counter(call.outcome for call, _ in tree_calls)
        replays = Counter(call.graph_id for call, _ in tree_calls if call.outcome == "replay")
        recorded = [(call, number) for call, number in tree_calls if call.outcome == "record"]
        pool_sizes = [self._pool_at_start] + [call.pool_bytes for call, _ in recorded]
        recordings = tuple(Recording(call.graph_id, call.compile_id, call.inputs,
                                     _growth(before, call.pool_bytes), replays[call.graph_id], number)
                           for (call, number), before in zip(recorded, pool_sizes))
        logged = self._skips.logged()
        skips = tuple(map(parse_skip, logged)) + tuple(_unlogged_skips(self._skips.count() - len(logged)))
        skip_count = self._skips.count()
        growth = (None if self._baseline is None
                  else torch.cuda.memory_reserved(self._device) - self._baseline)
        return CudaGraphReport(
            function=self._function, status=_status(len(recordings), skip_count),
            recordings=recordings, replays=outcomes["replay"], warmups=outcomes["warmup"],
            eager_runs=outcomes["eager"], skips=skips, skip_count=skip_count, calls=self._call,
            warmup=self._warmup, memory_growth_bytes=growth,
            overwritten_outputs=self._overwritten,
            reason="" if torch.cuda.is_available() else _NO_CUDA)

    def __repr__(self) -> str:
        return f"<CudaGraphTracker: {self.report().summary()}>"

    def _record(self, call: torch_cudagraphs.TreeCall) -> None:
        with self._lock:
            self._tree_calls.append((call, self._call))

    def _start(self) -> None:
        if not torch.cuda.is_available():
            return
        self._pool_at_start = torch_cudagraphs.cudagraph_pool_bytes(self._device)
        if self._warmup == 0:
            self._baseline = torch.cuda.memory_reserved(self._device)

    def _before_call(self, number: int) -> None:
        self._call = number

    def _after_call(self, number: int, args: tuple, outputs: Any) -> None:
        self._check_overwritten(args, outputs)
        if number == self._warmup:
            self._baseline = torch.cuda.memory_reserved(self._device)

    def _check_overwritten(self, args: tuple, outputs: Any) -> None:
        # The previous call's outputs are still referenced here, so the caching allocator cannot
        # have handed their memory out again: the same address means a replay wrote over them.
        inputs = {t.untyped_storage().data_ptr() for t in tensors_in(args)}
        kept = [t for t in tensors_in(outputs) if t.is_cuda]
        pointers = {t.untyped_storage().data_ptr() for t in kept} - inputs - {0}
        if pointers & self._output_ptrs:
            self._overwritten += 1
        self._output_ptrs, self._kept_outputs = pointers, kept

    def _freeze(self) -> None:
        self._kept_outputs = []
        self._final = self.report()


@contextlib.contextmanager
def _tracking(function: str, *, warmup: int, device: int | None) -> Iterator[CudaGraphTracker]:
    # The skip logger must exist before the state snapshot, so its level is restored.
    logging.getLogger(torch_cudagraphs.CUDAGRAPH_LOGGER)
    tracker = CudaGraphTracker(function, warmup=warmup, device=device)
    with preserved_torch_state(), torch_cudagraphs.cudagraph_tree_hook(tracker._record), \
            tracker._skips.attached():
        tracker._start()
        try:
            yield tracker
        finally:
            tracker._freeze()


@contextlib.contextmanager
def track_cudagraphs() -> Iterator[CudaGraphTracker]:
    """Record what CUDA graphs do in the block: recordings, replays, warmups, skips, memory.

    Yields a CudaGraphTracker; `report()` is live inside the block and final after it. Nothing is
    compiled or reset: functions compiled before the block are seen when they run in it, though a
    graph skipped at compile time shows its skip only if it compiles inside the block. Memory
    growth is measured from the start of the block. torch's logging is left as it was.
    """
    with _tracking("track_cudagraphs", warmup=0, device=None) as tracker:
        yield tracker


# -- running a function under CUDA graphs --------------------------------------------------------

def _cuda_device(args: tuple) -> int | None:
    return next((t.device.index for t in tensors_in(args) if t.is_cuda), None)


def _check_options(fn: Any, inputs: Any, *, warmup: Any, dynamic: Any) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    calls_of(inputs)  # raises the TypeError every checker raises, and iterates nothing
    if isinstance(inputs, Sized) and len(inputs) == 0:
        raise ValueError("inputs is empty: there is nothing to call")
    check_count("warmup", warmup)
    if dynamic is not None and not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be None, True or False, got {dynamic!r}")


def _not_applicable(name: str, warmup: int) -> CudaGraphReport:
    return CudaGraphReport(function=name, status="not applicable", recordings=(), replays=0,
                           warmups=0, eager_runs=0, skips=(), skip_count=0, calls=0,
                           warmup=warmup, memory_growth_bytes=None,
                           reason=f"{_NO_CUDA}, so nothing was compiled or run")


def cudagraph_report(fn: Callable, inputs: Iterable[Any], *, warmup: int = 2,
                     dynamic: bool | None = None) -> CudaGraphReport:
    """Compile `fn` afresh with mode="reduce-overhead", call it on every input, and report what
    CUDA graphs did.

    inputs: an iterable of calls, each a tuple of positional arguments or a single tensor, made in
    order (a graph is recorded on the second call with its shapes, so repeat a shape to see it
    recorded). warmup: the calls after which memory growth is measured; recordings, replays and
    skips count every call. Outputs are dropped after each call.

    Without a CUDA device nothing is compiled or called: the report's status is "not applicable".
    Dynamo is reset before and after, which frees the recorded graphs and their memory pool.
    """
    _check_options(fn, inputs, warmup=warmup, dynamic=dynamic)
    name = function_name(torch_dynamo.compiled_target(fn))
    if not torch.cuda.is_available():
        return _not_applicable(name, warmup)
    calls = calls_of(inputs)
    torch.compiler.reset()
    try:
        compiled = torch.compile(torch_dynamo.compiled_target(fn), mode="reduce-overhead",
                                 dynamic=dynamic)
        first = next(calls)
        with _tracking(name, warmup=warmup, device=_cuda_device(first)) as tracker:
            for number, args in enumerate(_prepend(first, calls), start=1):
                tracker._before_call(number)
                outputs = compiled(*args)
                tracker._after_call(number, args, outputs)
                del outputs
        return tracker.report()
    finally:
        torch.compiler.reset()


def _prepend(first: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield from rest


def _check_limits(max_recordings: Any, max_memory_growth_mb: Any, allow_skips: Any) -> None:
    check_count("max_recordings", max_recordings)
    if max_recordings < 1:
        raise ValueError("max_recordings must be >= 1: a check that nothing is recorded is "
                         "a check that CUDA graphs are not used")
    if isinstance(max_memory_growth_mb, bool) or not isinstance(max_memory_growth_mb, (int, float)):
        raise TypeError(f"max_memory_growth_mb must be a number, got "
                        f"{type(max_memory_growth_mb).__name__}")
    if not max_memory_growth_mb >= 0:
        raise ValueError(f"max_memory_growth_mb must be >= 0, got {max_memory_growth_mb}")
    if not isinstance(allow_skips, bool):
        raise TypeError(f"allow_skips must be True or False, got {allow_skips!r}")


def assert_cudagraphs(fn: Callable, inputs: Iterable[Any], *, max_recordings: int = 1,
                      max_memory_growth_mb: float = 0.0, allow_skips: bool = False,
                      warmup: int = 2, dynamic: bool | None = None,
                      msg: str | None = None) -> CudaGraphReport:
    """Fail unless CUDA graphs apply to `fn` over every input: at least one and at most
    `max_recordings` recordings, no skip (unless `allow_skips`), and reserved memory after the
    last call no more than `max_memory_growth_mb` above what it was after `warmup` calls.

    Runs cudagraph_report with the same inputs, warmup and dynamic, and returns its report. Without
    a CUDA device there is nothing to check: the "not applicable" report is returned.
    """
    __tracebackhide__ = True
    _check_limits(max_recordings, max_memory_growth_mb, allow_skips)
    report = cudagraph_report(fn, inputs, warmup=warmup, dynamic=dynamic)
    _raise_if_failing(report, max_recordings=max_recordings,
                     max_memory_growth_mb=max_memory_growth_mb, allow_skips=allow_skips, msg=msg)
    return report


def _raise_if_failing(report: CudaGraphReport, *, max_recordings: int, max_memory_growth_mb: float,
                      allow_skips: bool, msg: str | None) -> None:
    """Raise CudaGraphError if `report` breaks assert_cudagraphs' limits (checked by the caller);
    a "not applicable" report passes."""
    __tracebackhide__ = True
    if not report.applicable:
        return
    headlines, entries, hints = [], [], []
    if report.skip_count and not allow_skips:
        headlines.append(f"{counted(report.skip_count, 'CUDA-graph skip')} in {report.function} "
                         f"(limit 0)")
        entries += [_skip_entry(skip) for skip in report.skips]
        hints += [skip.hint for skip in report.skips if skip.hint]
    if not report.recordings:
        headlines.append(f"no CUDA graph recorded in {_runs(report)} (limit: at least 1)")
        if not report.skip_count:
            hints.append(_NO_RECORDING_HINT)
    elif len(report.recordings) > max_recordings:
        headlines.append(f"{counted(len(report.recordings), 'CUDA-graph recording')} of "
                         f"{report.function}, more than the limit of {max_recordings}")
        entries += _recording_entries(report.recordings)
        hints.append(_RECORDINGS_HINT)
    growth = report.memory_growth_bytes
    if growth is not None and growth > max_memory_growth_mb * MIB:
        headlines.append(f"memory grew by {_mib(growth)} after warmup, more than the limit of "
                         f"{max_memory_growth_mb:g} MiB")
        entries.append([f"memory: {_mib(growth, sign=True)} reserved between call {report.warmup} "
                        f"and call {report.calls}" if report.calls is not None else
                        f"memory: {_mib(growth, sign=True)} reserved in the block"])
        hints.append(_MEMORY_HINT)
    if headlines:
        message = format_failure("; ".join(headlines), entries,
                                 hint=" ".join(dict.fromkeys(hints)) or None, msg=msg)
        raise CudaGraphError(message, report)


def _runs(report: CudaGraphReport) -> str:
    if report.calls is not None:
        return counted(report.calls, "call")
    return counted(report.graph_runs, "graph run")


def _skip_entry(skip: CudaGraphSkip) -> list[str]:
    if skip.where is None:
        return [f"skipped: {skip.kind}", skip.message]
    return [f"{skip.where.location()}: skipped, {skip.kind}", skip.where.line, skip.message]


def _recording_entries(recordings: tuple[Recording, ...]) -> list[list[str]]:
    entries = [[f"recording{_at_call(recording)}: inputs {recording.describe_inputs()}",
                f"{_mib(recording.memory_bytes)} pool, {counted(recording.replays, 'replay')}"]
               for recording in recordings[:_LISTED_RECORDINGS]]
    rest = recordings[_LISTED_RECORDINGS:]
    if rest:
        sizes = [recording.memory_bytes for recording in rest]
        held = None if None in sizes else sum(sizes)
        entries.append([f"and {counted(len(rest), 'more recording')}, {_mib(held)} pool"])
    return entries
