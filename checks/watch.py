"""Record everything torch.compile does in a block of code, in every function it compiles.

    with watch() as seen:
        main()
    seen.graph_breaks     # each distinct break once, with .count
    seen.recompiles       # with the guard that failed
    seen.summary()        # {"graph_count": ..., "graph_breaks": ..., "recompiles": ...}

The checkers compile one function and reset dynamo around it; watch() compiles nothing and resets
nothing. It listens while arbitrary code runs (a script, a test, a training loop) and sees what
that code's own torch.compile calls do: the graph breaks where dynamo records them, the compiles
and recompiles through track_compiles(), and the graphs dynamo hands to its backend and the
CUDA-graph skips inductor counts, each heard as torch counts it, so code that clears torch's
counters (torch._dynamo.test_case.TestCase does, around each test) loses nothing here. Breaks and
compiles happen when a function is compiled: a function compiled before the block and not
compiled again inside it shows nothing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from . import graph_breaks
from ._compat import breaks as torch_breaks
from ._compat import cudagraphs as torch_cudagraphs
from ._compat import dynamo as torch_dynamo
from ._compat import hooks as torch_hooks
from ._message import Frame
from ._state import preserved_torch_state
from .graph_breaks import GraphBreak
from .recompiles import CompileEvent, CompileReport, track_compiles

__all__ = ["Watch", "CompileTiming", "TransformedCode", "watch"]


@dataclass(frozen=True)
class CompileTiming:
    """When one compile ran: `start` in seconds after the block began, `seconds` it took.

    Either is None where torch recorded no time (a compile torch dropped from its metrics).
    """

    compile_id: str
    kind: str  # as CompileEvent.kind: compile, recompile or recompile_limit
    function: Frame
    start: float | None
    seconds: float | None

    def to_dict(self) -> dict:
        return {"compile_id": self.compile_id, "kind": self.kind,
                "function": self.function.function, "start": _rounded(self.start),
                "seconds": _rounded(self.seconds)}


@dataclass(frozen=True)
class TransformedCode:
    """The bytecode dynamo produced in one compile of a frame: the original function rewritten to
    call the compiled graph and the resume functions. One per cache entry of the frame's code."""

    compile_id: str
    code: types.CodeType


class Watch:
    """What torch.compile did inside a `watch()` block: live while it runs, final after it.

    `graph_breaks` lists each distinct break once (the same site reached through the same calls),
    in the order first seen, its `count` the number of compiles that met it. `compile_times`
    runs parallel to `compiles`. `cudagraph_skips` holds inductor's message for each logged skip,
    then one line for any skips it counted without a message; `cudagraph_skip_count` counts both.
    """

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._breaks = _BreakRecorder(on_change)
        self._heard = _HeardCounts()
        self._skips = SkipRecorder(on_change)
        self._compile_report: CompileReport | None = None
        self._metrics = _MetricsReader()
        self._final: dict[str, Any] | None = None

    @property
    def graph_breaks(self) -> tuple[GraphBreak, ...]:
        return self._final_or("graph_breaks", self._breaks.breaks)

    @property
    def compiles(self) -> tuple[CompileEvent, ...]:
        return self._compile_report.events if self._compile_report else ()

    @property
    def recompiles(self) -> tuple[CompileEvent, ...]:
        """Recompiles, those refused at the recompile limit included (kind "recompile_limit")."""
        return self._compile_report.recompiles if self._compile_report else ()

    @property
    def limit_hits(self) -> tuple[CompileEvent, ...]:
        return self._compile_report.limit_hits if self._compile_report else ()

    @property
    def compile_times(self) -> tuple[CompileTiming, ...]:
        return self._final_or("compile_times", lambda: self._metrics.timings(self.compiles))

    @property
    def cudagraph_skips(self) -> tuple[str, ...]:
        return self._final_or("cudagraph_skips", self._skips.messages)

    @property
    def cudagraph_skip_count(self) -> int:
        return self._final_or("cudagraph_skip_count", self._skips.count)

    @property
    def graph_count(self) -> int:
        """Graphs dynamo handed to a backend inside the block (a frame with no tensor op makes none)."""
        return self._final_or("graph_count", lambda: self._heard["graphs"])

    @property
    def dynamo_config(self) -> dict[str, Any]:
        """Dynamo config that differed from torch's defaults, as the block left it."""
        return self._final_or("dynamo_config", torch_dynamo.non_default_dynamo_config)

    def transformed_code(self, brk: GraphBreak) -> tuple[TransformedCode, ...]:
        """The bytecode dynamo produced for the frame it was compiling when `brk` happened, one
        per cache entry, that of `first_compile(brk)` first where dynamo still holds it, then the
        rest most recently used first; empty once dynamo dropped them (a reset)."""
        key = graph_breaks.break_key(brk)
        return self._final_or("transformed", self._breaks.all_transformed_code).get(key, ())

    def first_compile(self, brk: GraphBreak) -> str | None:
        """The id ("0/1") of the compile that met `brk` first; None for a break not seen here."""
        return self._breaks.first_compile(graph_breaks.break_key(brk))

    def summary(self) -> dict:
        """graph_breaks counts distinct breaks, torch.compiler.disable'd calls left out."""
        return {"graph_count": self.graph_count,
                "graph_breaks": sum(not brk.disabled for brk in self.graph_breaks),
                "recompiles": len(self.recompiles)}

    def to_dict(self) -> dict:
        return {"summary": self.summary(),
                "graph_breaks": [brk.to_dict() for brk in self.graph_breaks],
                "compiles": [event.to_dict() for event in self.compiles],
                "compile_times": [timing.to_dict() for timing in self.compile_times],
                "cudagraph_skips": list(self.cudagraph_skips),
                "dynamo_config": {key: _json_value(value) for key, value in self.dynamo_config.items()}}

    def __repr__(self) -> str:
        summary = self.summary()
        return (f"<Watch: {summary['graph_count']} graphs, {summary['graph_breaks']} graph breaks, "
                f"{summary['recompiles']} recompiles, {self.cudagraph_skip_count} cudagraph skips>")

    def _final_or(self, name: str, live: Callable[[], Any]) -> Any:
        return self._final[name] if self._final is not None else live()

    def _start(self, report: CompileReport) -> None:
        self._compile_report = report
        self._metrics.start()

    def _freeze(self) -> None:
        # Read while the metrics store is still widened and the config still the block's.
        self._final = {"graph_breaks": self._breaks.breaks(),
                 "compile_times": self._metrics.timings(self.compiles),
                 "cudagraph_skips": self._skips.messages(),
                 "cudagraph_skip_count": self._skips.count(),
                 "graph_count": self.graph_count,
                 "dynamo_config": torch_dynamo.non_default_dynamo_config(),
                 "transformed": self._breaks.all_transformed_code()}


@contextlib.contextmanager
def watch(on_change: Callable[[], None] | None = None) -> Iterator[Watch]:
    """Record every graph break, compile, recompile and CUDA-graph skip in the block.

    Yields a Watch, live inside the block and final after it. Dynamo is not reset, before or
    after. torch's config, stance and logging are left as they were, pass or fail, and anything
    the block raises is raised again, after the Watch is final.

    on_change: called with no arguments right after each graph break or CUDA-graph skip is
    recorded, on the thread that recorded it (inside dynamo's compile or inductor's logging), so
    that what was seen can be saved before a crash; it must not raise.
    """
    # Both touch torch (an import, a torch.compile wrapper) and must not do so mid-compile; the
    # skip logger must exist before the snapshot so its level is restored.
    torch_dynamo.compilation_metrics()
    torch_dynamo.compile_wrapper_code()
    logging.getLogger(torch_cudagraphs.CUDAGRAPH_LOGGER)
    seen = Watch(on_change)
    with preserved_torch_state(), track_compiles() as report, \
            torch_hooks.graph_break_hook(seen._breaks.record), \
            torch_hooks.counter_hook(seen._heard.add), \
            seen._skips.attached():
        seen._start(report)
        try:
            yield seen
        finally:
            seen._freeze()


# -- graph breaks -----------------------------------------------------------------------------

class _BreakRecorder:
    """Turns graph_break_hook's records into distinct breaks with the number of times each happened.

    dynamo records one break several times in one compile: a helper that breaks is traced inside
    its caller, then compiled as its own frame (and its caller's caller, ...), and a break in a loop
    is recorded as "graph break in loop" and again by its cause. Those records follow each other on
    one thread with the same key, each from the same compile or from a frame deeper in the
    break's stack. A record that does neither (the caller compiled again) is a new occurrence.
    """

    def __init__(self, on_change: Callable[[], None] | None) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._first: dict[Hashable, GraphBreak] = {}
        # The frame dynamo was compiling when it first met each break, and that compile's id.
        self._codes: dict[Hashable, tuple[types.CodeType, str | None]] = {}
        self._counts: Counter = Counter()
        self._last: dict[int, tuple[Hashable, str | None, int]] = {}

    def record(self, exc: BaseException, code: types.CodeType, lineno: int | None) -> None:
        above = graph_breaks.user_frames_above_dynamo(self._is_entry) or []
        brk = graph_breaks.graph_break_of(exc, code, lineno, above)
        key = graph_breaks.break_key(brk)
        compile_id = torch_dynamo.current_compile_id()
        depth = _depth(brk.frames, code)
        thread = threading.get_ident()
        with self._lock:
            last = self._last.get(thread)
            self._last[thread] = (key, compile_id, depth)
            self._first.setdefault(key, brk)
            self._codes.setdefault(key, (code, compile_id))
            same = last is not None and last[0] == key and (last[1] == compile_id or depth > last[2])
            if not same:
                self._counts[key] += 1
        if self._on_change is not None:
            self._on_change()

    @staticmethod
    def _is_entry(frame: types.FrameType) -> bool:
        # watch() has made the wrapper already: torch.compile is not called mid-compile here.
        return frame.f_code is torch_dynamo.compile_wrapper_code()

    def breaks(self) -> tuple[GraphBreak, ...]:
        with self._lock:
            return tuple(dataclasses.replace(brk, count=self._counts[key])
                         for key, brk in self._first.items())

    def first_compile(self, key: Hashable) -> str | None:
        with self._lock:
            return self._codes.get(key, (None, None))[1]

    def transformed_code(self, key: Hashable) -> tuple[TransformedCode, ...]:
        with self._lock:
            code, compile_id = self._codes.get(key, (None, None))
        if code is None:
            return ()
        found = [TransformedCode(torch_dynamo.entry_compile_id(entry), transformed)
                 for entry in torch_dynamo.cache_entries(code)
                 if (transformed := torch_dynamo.entry_code(entry)) is not None]
        # Dynamo keeps them most recently used first, and one code object can stand for several
        # functions (a decorator's wrapper): the entry of the compile that met the break leads.
        return tuple(sorted(found, key=lambda entry: entry.compile_id != compile_id))

    def all_transformed_code(self) -> dict[Hashable, tuple[TransformedCode, ...]]:
        with self._lock:
            keys = list(self._codes)
        return {key: self.transformed_code(key) for key in keys}


def _depth(frames: tuple[Frame, ...], code: types.CodeType) -> int:
    """Where in a break's stack the frame dynamo was compiling sits (0 outermost); -1 if absent.

    Matched by file, name and line: two methods called `forward` can share a file.
    """
    name = torch_breaks.remove_resume_prefix(code.co_name)
    lines = {line for _, _, line in code.co_lines()}
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if (frame.filename, frame.function) == (code.co_filename, name) and frame.lineno in lines:
            return index
    return -1


# -- graphs and CUDA-graph skips -------------------------------------------------------------

class _HeardCounts:
    """What counter_hook heard inside the block, by figure (graphs, cudagraph_skips)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, figure: str, increase: int) -> None:
        with self._lock:
            self._counts[figure] += increase

    def __getitem__(self, figure: str) -> int:
        with self._lock:
            return self._counts[figure]


class SkipRecorder(logging.Handler):
    """Hears inductor's "skipping cudagraphs due to ..." warnings, and counts skips as torch counts
    them (the logged ones and those on a non-CUDA device, which inductor skips without a word)."""

    _fullgraph = True  # _state strips handlers so marked from loggers created while inside

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self._on_change = on_change
        self._messages: list[str] = []
        self._heard = _HeardCounts()

    def emit(self, record: logging.LogRecord) -> None:
        if torch_cudagraphs.is_cudagraph_skip(record):
            self._messages.append(record.getMessage())
            if self._on_change is not None:
                self._on_change()

    def count(self) -> int:
        # inductor counts every skip it logs; the larger number still wins if that ever changes.
        return max(len(self._messages), self._heard["cudagraph_skips"])

    def logged(self) -> tuple[str, ...]:
        """The messages inductor logged, without a line for the skips it counted silently."""
        return tuple(self._messages)

    def messages(self) -> tuple[str, ...]:
        """The logged messages, then one line for the skips counted without one."""
        messages = self.logged()
        unlogged = self.count() - len(messages)
        if unlogged:
            messages += (f"{unlogged} more skipped without a logged reason (inductor skips graphs "
                         f"on a non-CUDA device this way)",)
        return messages

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        logger = logging.getLogger(torch_cudagraphs.CUDAGRAPH_LOGGER)
        # Skips are warnings: heard even where torch's logging is quieter (preserved_torch_state
        # puts the level back).
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        logger.addHandler(self)
        try:
            with torch_hooks.counter_hook(self._heard.add):
                yield
        finally:
            logger.removeHandler(self)


# -- compile times ----------------------------------------------------------------------------

class _MetricsReader:
    """Pairs each CompileEvent with the compilation metrics torch recorded for it."""

    def __init__(self) -> None:
        self._old: list[Any] = []
        self._seen: set[int] = set()
        self._started = 0.0

    def start(self) -> None:
        # Holding the old metrics keeps their ids from being reused by new ones.
        self._old = torch_dynamo.compilation_metrics()
        self._seen = {id(metrics) for metrics in self._old}
        self._started = time.time()

    def timings(self, events: tuple[CompileEvent, ...]) -> tuple[CompileTiming, ...]:
        # Compile ids restart after a reset: pair each event with the first unused metrics of its id.
        unused = [metrics for metrics in torch_dynamo.compilation_metrics()
                  if id(metrics) not in self._seen and metrics.is_forward is not False]
        timings = []
        for event in events:
            found = next((m for m in unused if m.compile_id == event.compile_id), None)
            if found is not None:
                unused.remove(found)
            start = getattr(found, "start_time", None)
            timings.append(CompileTiming(
                event.compile_id, event.kind, event.function,
                start=None if start is None else max(0.0, start - self._started),
                seconds=getattr(found, "entire_frame_compile_time_s", None)))
        return tuple(timings)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
