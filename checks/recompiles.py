"""Count recompiles, say why each happened, and hold code to a budget.

dynamo keeps a list of compiled graphs per code object, each behind guards. When a call fails the
guards of every cached graph, the function compiles again; after `torch._dynamo.config.
recompile_limit` graphs (8 by default) it stops compiling that function and runs it eagerly from
then on, with one warning in the log. A recompile per call is therefore a slowdown that ends in a
silent fallback to eager, and this module makes both visible.

    with track_compiles() as report:       # every compile in the block, live
        ...
    with recompile_budget(1):              # raises RecompileBudgetError on the second recompile
        ...
    assert_recompiles_at_most(fn, inputs, 1)

Where the facts come from (all through _compat):
  - torch._dynamo.utils' compilation metrics: one entry per compile attempt, with the compile id,
    the code object's name, file and first line, and the failure of the cache entry used last;
  - the `recompiles` log artifact: the failure of every cache entry, one `- <entry>: <reason>` line
    each, parsed into GuardFailure;
  - convert_frame's "torch._dynamo hit config.recompile_limit" warning, and the metrics of the
    attempt it refused.

Guard sources are written the way torch's recompile messages write them: an argument by its name
(`x.size()[1]`, `self.step`), a global as `G['name']`.

The module holds one concept past 500 lines, the compile event: a recompile is an event with the
guard failures that caused it, and the tracker, the budget and assert_recompiles_at_most all count
and describe the same events, so splitting them would only pass CompileEvent between files. The
parsing of torch's guard text is in _compat/guard_failures.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import _state
from ._args import check_backend, prefixed
from ._compat import dynamo as torch_dynamo
from ._compat import guard_failures as torch_guard_failures
from ._compat import guards as torch_guards
from ._compat import hooks as torch_hooks
from ._frames import user_frame_in
from ._message import CheckFailure, Frame, counted, format_failure

__all__ = [
    "GuardFailure",
    "CompileEvent",
    "CompileReport",
    "RecompileBudgetError",
    "track_compiles",
    "recompile_budget",
    "assert_recompiles_at_most",
]

# Metrics kept while a tracker is open: torch keeps 64, fewer than a long shape sweep makes.
_RETAINED_METRICS = 4096

# Guard kinds whose value is a Python object, not a tensor property: the ones that can change on
# every call (a counter, an id).
VALUE_KINDS = frozenset({"value", "id", "type", "length"})


class RecompileBudgetError(CheckFailure):
    """More recompiles than the budget allowed, or a function hit dynamo's recompile limit."""


# -- guard failures ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardFailure:
    """Why one cached graph rejected a call: the first of its guards that failed.

    kind: size, stride, ndim, dtype, device, dispatch_keys, requires_grad, grad_mode,
    global_state, value, id, type, length, dict_keys, backend, aliasing or other.
    A size guard with bounds (`2 <= x.size()[0] <= 11`) has the size as its source and the
    bounds as expected (`>= 2 and <= 11`). Sources are normalised: a global dynamo names anew in
    each compile (`__builtins_dict___N`, ...) reads the same in every compile.
    """

    entry: str  # compile id of the cache entry whose guard failed, e.g. "0/1"
    kind: str
    source: str  # what was guarded: "x.size()[1]", "self.step", "G['COUNT']", "grad_mode"
    expected: str | None
    actual: str | None
    where: Frame | None  # the user line that made dynamo install the guard, when torch says
    note: str  # torch's hint for this guard, or what a 0/1 specialisation means; may be empty
    text: str  # torch's text for this failure, verbatim

    @property
    def origin(self) -> str:
        """What kind of object the guard watches: argument, module attribute, global or state."""
        if self.kind in {"grad_mode", "global_state", "backend"}:
            return "global state"
        return torch_guards.source_origin(self.source)

    def describe(self) -> str:
        """One line: `dtype guard on x.dtype: expected Float, actual Double`."""
        values = self.values()
        return f"{self.subject()}: {values}" if values else self.subject()

    def subject(self) -> str:
        """What failed, without the values: `size guard on x.size()[1]`."""
        return guard_subject(self.kind, self.source)

    def values(self) -> str:
        """`expected 3, actual 4`, or as much of it as torch said."""
        parts = [f"expected {self.expected}" if self.expected is not None else "",
                 f"actual {self.actual}" if self.actual is not None else ""]
        return ", ".join(part for part in parts if part)

    def to_dict(self) -> dict:
        return {"entry": self.entry, "kind": self.kind, "source": self.source,
                "expected": self.expected, "actual": self.actual,
                "where": self.where.to_dict() if self.where else None, "note": self.note,
                "text": self.text}


def guard_subject(kind: str, source: str) -> str:
    """A guard of this kind on this source, in words: `size guard on x.size()[1]`."""
    if kind in {"grad_mode", "global_state"}:
        return f"global state changed: {source}"
    return f"{kind} guard on {source}"


def parse_guard_failure(reason: str, *, scope: dict[str, Any] | None = None) -> GuardFailure:
    """A GuardFailure from one reason as torch words it: `0/0: tensor 'x' size mismatch ...`.

    scope: the local variables of the call that failed the guard, where known; a size guard's
    actual value is read from them, since torch's text gives only the bounds.
    """
    entry, expression, comment, rest = torch_guard_failures.split_reason(reason)
    kind, source, expected, actual = torch_guard_failures.classify_failure(expression)
    if actual is None and kind in {"size", "stride"} and scope is not None:
        value = torch_guard_failures.size_value(source, scope)
        actual = None if value is None else str(value)
    return GuardFailure(entry=entry, kind=kind, source=source, expected=expected, actual=actual,
                        where=user_frame_in(rest) or _commented_frame(comment),
                        note=torch_guard_failures.note_of(comment), text=reason)


def _commented_frame(comment: str) -> Frame | None:
    """The frame in dynamo's comment ("# <code>  # tests/m.py:40 in fn"), for guards that come
    without a user stack (symbolic-shape guards)."""
    found = torch_guard_failures.commented_frame(comment)
    path = torch_guard_failures.unshortened(found[0]) if found else None
    return Frame.at(path, found[1], found[2]) if path else None


def failures_from_log(message: str, *, scope: dict[str, Any] | None = None
                      ) -> list[GuardFailure]:
    """The GuardFailures listed in one `recompiles` (or `recompiles_verbose`) log message."""
    return [parse_guard_failure(reason, scope=scope)
            for reason in torch_guard_failures.log_reasons(message)]


# -- compile events and the report ---------------------------------------------------------------

@dataclass(frozen=True)
class CompileEvent:
    """One compile attempt of one code object.

    kind: "compile" (its first graph), "recompile" (no cached graph accepted the call), or
    "recompile_limit" (dynamo refused to compile again and runs the function eagerly from now on,
    saying nothing more).
    """

    compile_id: str
    kind: str
    function: Frame  # the compiled code object: file, first line, name
    # One per cache entry that rejected the call, most recently used first.
    failures: tuple[GuardFailure, ...]
    error: str | None = None  # the limit that was hit, or the exception that ended the compile

    @property
    def recompile(self) -> bool:
        return self.kind != "compile"

    def to_dict(self) -> dict:
        return {"compile_id": self.compile_id, "kind": self.kind,
                "function": self.function.to_dict(),
                "failures": [failure.to_dict() for failure in self.failures], "error": self.error}


class CompileReport:
    """Every compile inside a `track_compiles` block: live while the block runs, frozen after.

    collector: what feeds it while the block runs (track_compiles attaches one); None for none.
    """

    def __init__(self, collector: _Collector | None = None) -> None:
        self._events: list[CompileEvent] = []
        self._collector = collector

    @property
    def events(self) -> tuple[CompileEvent, ...]:
        if self._collector is not None:
            self._events.extend(self._collector.drain())
        return tuple(self._events)

    @property
    def recompiles(self) -> tuple[CompileEvent, ...]:
        """Recompiles, the refused ones (kind "recompile_limit") included."""
        return tuple(event for event in self.events if event.recompile)

    @property
    def limit_hits(self) -> tuple[CompileEvent, ...]:
        return tuple(event for event in self.events if event.kind == "recompile_limit")

    def by_function(self) -> dict[Frame, tuple[CompileEvent, ...]]:
        grouped: dict[Frame, list[CompileEvent]] = defaultdict(list)
        for event in self.events:
            grouped[event.function].append(event)
        return {function: tuple(events) for function, events in grouped.items()}

    def to_dict(self) -> dict:
        return {"events": [event.to_dict() for event in self.events]}

    def __str__(self) -> str:
        events = self.events
        lines = [f"{counted(len(events), 'compile')}, "
                 f"{counted(len(self.recompiles), 'recompile')}, "
                 f"{counted(len(self.limit_hits), 'recompile-limit hit')}"]
        for event in events:
            lines.append(f"  {event.compile_id} {event.kind}: {event.function.location()}")
            lines.extend(f"      {line}" for line in failure_lines(event.failures))
            if event.error:
                lines.append(f"      {event.error}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<CompileReport: {len(self.events)} compiles, {len(self.recompiles)} recompiles, "
                f"{len(self.limit_hits)} recompile-limit hits>")

    def _freeze(self) -> None:
        if self._collector is not None:
            self._events.extend(self._collector.drain())
            self._collector = None


def failure_lines(failures: Iterable[GuardFailure], *, limit: int = 6) -> list[str]:
    """One line per guard, however many cache entries it failed in, with the user line that
    installed it and torch's hint under it."""
    grouped: dict[tuple, list[GuardFailure]] = {}
    for failure in failures:
        grouped.setdefault((failure.kind, failure.source), []).append(failure)
    lines = []
    for same in list(grouped.values())[:limit]:
        # One guard installed by one line, though a guard read without a user stack may say less.
        first = next((failure for failure in same if failure.where is not None), same[0])
        by_values: dict[str, list[str]] = {}
        for failure in same:
            by_values.setdefault(failure.values(), []).append(failure.entry)
        values = "; ".join(f"{text} (entry {', '.join(entries)})" if text
                           else f"(entry {', '.join(entries)})"
                           for text, entries in by_values.items())
        separator = ": " if first.values() else " "
        lines.append(f"{first.subject()}{separator}{values}")
        if first.where is not None:
            lines.append(f"  guarded at {first.where.location()}: {first.where.line}")
        if first.note:
            lines.append(f"  torch: {first.note}")
    if len(grouped) > limit:
        lines.append(f"... and {len(grouped) - limit} more guards")
    return lines


# -- collecting ----------------------------------------------------------------------------------

class _Collector(logging.Handler):
    """Hears the recompile reasons and the recompile-limit warning; turns metrics into events."""

    _fullgraph = True  # _state strips handlers so marked from loggers created while inside

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._reasons: dict[str, deque[list[GuardFailure]]] = defaultdict(deque)
        self._limit_warnings: dict[str, torch_guard_failures.LimitWarning] = {}
        # Identity tells new metrics from old ones; holding the old ones keeps their ids unique.
        self._old = torch_dynamo.compilation_metrics()
        self._seen = {id(metrics) for metrics in self._old}
        self._functions: dict[str, Frame] = {}
        for metrics in self._old:
            self._remember_function(metrics)

    def emit(self, record: logging.LogRecord) -> None:
        compile_id = torch_dynamo.current_compile_id() or "?"
        message = record.getMessage()
        if record.name in torch_guard_failures.RECOMPILES_LOGGERS:
            # Parsed now, while the call that failed the guards is still on the stack: a size
            # guard's actual value is read from its locals.
            self._reasons[compile_id].append(
                failures_from_log(message, scope=torch_guard_failures.recompiling_locals()))
        else:
            warning = torch_guard_failures.limit_warning(message)
            if warning:
                self._limit_warnings[compile_id] = warning

    def drain(self) -> list[CompileEvent]:
        events = []
        for metrics in torch_dynamo.compilation_metrics():
            if id(metrics) in self._seen:
                continue
            self._seen.add(id(metrics))
            self._old.append(metrics)
            # Backward graphs compiled by AOTAutograd have metrics of their own; not a compile
            # of a Python frame.
            if metrics.is_forward is False:
                continue
            self._remember_function(metrics)
            events.append(self._event(metrics))
        return events

    def _remember_function(self, metrics: Any) -> None:
        if metrics.co_name and metrics.compile_id:
            self._functions[torch_dynamo.frame_of_compile(metrics.compile_id)] = Frame.at(
                metrics.co_filename, metrics.co_firstlineno, metrics.co_name)

    def _event(self, metrics: Any) -> CompileEvent:
        compile_id = metrics.compile_id or "?"
        warning = self._limit_warnings.pop(compile_id, None)
        limit_hit = warning is not None or torch_guard_failures.is_recompile_limit_failure(
            metrics.fail_type, metrics.fail_reason)
        reasons = self._reasons.get(compile_id)
        if reasons:
            failures = reasons.popleft()
        elif metrics.recompile_reason:
            failures = [parse_guard_failure(metrics.recompile_reason)]
        else:
            failures = []
        if limit_hit:
            kind = "recompile_limit"
            limit = (f"{warning.limit} ({warning.value})" if warning
                     else f"recompile_limit ({torch_dynamo.recompile_limit()})")
            error = f"hit torch._dynamo.config.{limit}: runs eagerly from now on"
        else:
            kind = "recompile" if metrics.recompile_reason or failures else "compile"
            error = f"{metrics.fail_type}: {metrics.fail_reason}" if metrics.fail_type else None
        return CompileEvent(compile_id=compile_id, kind=kind,
                            function=self._function(metrics, warning),
                            failures=tuple(failures), error=error)

    def _function(self, metrics: Any, warning: torch_guard_failures.LimitWarning | None) -> Frame:
        if metrics.co_name:
            return Frame.at(metrics.co_filename, metrics.co_firstlineno, metrics.co_name)
        # A refused attempt's metrics name no code object: take it from the warning, or from an
        # earlier compile of the same frame.
        if warning is not None:
            return Frame.at(warning.file, warning.line, warning.function)
        known = self._functions.get(torch_dynamo.frame_of_compile(metrics.compile_id or "?"))
        return known if known is not None else Frame("<unknown>", 0, "<unknown>")


def _attach(collector: _Collector) -> None:
    """Listen to the recompile reasons without printing them unless the user already asked to."""
    user_enabled = any(torch_hooks.log_artifact_enabled(name)
                       for name in ("recompiles", "recompiles_verbose"))
    if not user_enabled:
        torch_hooks.enable_log_artifact("recompiles")
    for name in torch_guard_failures.RECOMPILES_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(collector)
        if not user_enabled:
            logger.setLevel(logging.DEBUG)
            logger.propagate = False
    logging.getLogger(torch_guard_failures.CONVERT_FRAME_LOGGER).addHandler(collector)


@contextlib.contextmanager
def track_compiles() -> Iterator[CompileReport]:
    """Record every compile of every function compiled inside the block.

    Yields a CompileReport that is live inside the block and frozen after it. Dynamo is not
    reset, so functions compiled before the block are watched too (their recompiles count, their
    earlier compiles do not). torch's config, stance, logging and the size of its
    compilation-metrics store are left as they were, pass or fail.
    """
    # Import torch._dynamo.utils (and with it the guard loggers) before the state snapshot.
    torch_dynamo.compilation_metrics()
    with _state.preserved_torch_state(), \
            torch_dynamo.retained_compilation_metrics(_RETAINED_METRICS):
        collector = _Collector()
        _attach(collector)
        report = CompileReport(collector)
        try:
            yield report
        finally:
            report._freeze()


# -- budgets -------------------------------------------------------------------------------------

def check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def over_budget(events: Iterable[CompileEvent], max_recompiles: int, *,
                per_function: bool) -> list[tuple[CompileEvent, int]]:
    """(event, its recompile number) for each recompile past the budget, and every limit hit."""
    counts: Counter = Counter()
    offenders = []
    for event in events:
        if not event.recompile:
            continue
        key = event.function if per_function else None
        counts[key] += 1
        if event.kind == "recompile_limit" or counts[key] > max_recompiles:
            offenders.append((event, counts[key]))
    return offenders


def budget_message(report: CompileReport, offenders: list[tuple[CompileEvent, int]],
                   max_recompiles: int, *, per_function: bool, msg: str | None) -> str:
    over = [event for event, _ in offenders if event.kind == "recompile"]
    hits = [event for event, _ in offenders if event.kind == "recompile_limit"]
    parts = [_over_headline(report, over, max_recompiles, per_function)] if over else []
    if hits:
        parts.append(f"{len(hits)} hit torch._dynamo.config.recompile_limit and fell back to eager")
    entries = [[f"{event.function.location()}: {_event_title(event, number)}",
                *failure_lines(event.failures), event.error or ""]
               for event, number in offenders]
    kinds = [_hint_kind(failure) for event, _ in offenders for failure in event.failures[:1]]
    return format_failure("; ".join(parts), entries, hint=_hint(kinds, bool(hits)), msg=msg)


def _hint_kind(failure: GuardFailure) -> str:
    # An id guard on the code of a function the compiled one closes over: a decorator's wrapper,
    # one code object for every function it wraps.
    if failure.kind == "id" and failure.source.endswith(".__code__"):
        return "wrapped_code"
    return failure.kind


def _over_headline(report: CompileReport, over: list[CompileEvent], max_recompiles: int,
                   per_function: bool) -> str:
    if not per_function:
        return (f"{counted(len(report.recompiles), 'recompile')}, more than the limit of "
                f"{max_recompiles}")
    functions = dict.fromkeys(event.function for event in over)
    if len(functions) == 1:
        function = next(iter(functions))
        count = sum(event.function == function for event in report.recompiles)
        return (f"{function.function} recompiled {counted(count, 'time')}, more than the limit "
                f"of {max_recompiles} per function")
    return (f"{len(functions)} functions recompiled more than the limit of {max_recompiles} per "
            f"function ({counted(len(over), 'recompile')} over)")


def _event_title(event: CompileEvent, number: int) -> str:
    if event.kind == "recompile_limit":
        return f"recompile #{number} refused: recompile limit hit (compile {event.compile_id})"
    return f"recompile #{number} (compile {event.compile_id})"


_HINTS = {
    "size": "A size changes between calls: mark it dynamic (torch._dynamo.mark_dynamic) or "
            "compile with dynamic=None/True; sizes 0 and 1 always get graphs of their own.",
    "stride": "A layout changes between calls: make the input contiguous before the call.",
    "dtype": "Each dtype is a graph of its own: cast before the call.",
    "device": "Each device is a graph of its own.",
    "requires_grad": "requires_grad is part of the guard: each setting is a graph of its own.",
    "grad_mode": "Grad mode is part of the guard: calling under no_grad after grad (or the "
                 "reverse) compiles again; compile one function per mode.",
    "value": "A Python value is baked into the graph: pass it as a tensor, or keep it constant; "
             "int attributes of an nn.Module are always treated as constants.",
    "id": "A different Python object (a function, a module) reached the compiled code: keep it "
          "the same object between calls.",
    "wrapped_code": "One code object runs several functions: a wrapper (a decorator's) calls the "
                    "function it closes over, and each function it wraps takes a cache entry of "
                    "the wrapper's code, all under one recompile limit. Past the limit the rest "
                    "run eagerly without a word: compile the functions the wrapper calls (its "
                    "__wrapped__) instead, or set torch._dynamo.config.recompile_limit to the "
                    "number of functions wrapped.",
}


def _hint(kinds: list[str], limit_hit: bool) -> str:
    hints = [_HINTS[kind] for kind in dict.fromkeys(kinds) if kind in _HINTS]
    if limit_hit and "wrapped_code" not in kinds:  # whose hint says what the limit does there
        hints.append("Past the recompile limit dynamo runs the function eagerly without a word: "
                     "fix the guard above rather than raising the limit.")
    return " ".join(hints) or "Run with TORCH_LOGS=recompiles_verbose to see every guard."


@contextlib.contextmanager
def recompile_budget(max_recompiles: int, *, per_function: bool = True,
                     msg: str | None = None) -> Iterator[CompileReport]:
    """Fail if the block recompiles more than `max_recompiles` times, or hits the recompile limit.

    per_function: count each function's recompiles separately (the default), or all together.
    Yields the live CompileReport; raises RecompileBudgetError on exit, naming each recompile
    over the budget with the guards that failed.
    """
    __tracebackhide__ = True
    check_count("max_recompiles", max_recompiles)
    with track_compiles() as report:
        yield report
    _raise_if_over(report, max_recompiles, per_function=per_function, msg=msg)


def _raise_if_over(report: CompileReport, max_recompiles: int, *, per_function: bool,
                   msg: str | None) -> None:
    __tracebackhide__ = True
    offenders = over_budget(report.events, max_recompiles, per_function=per_function)
    if offenders:
        raise RecompileBudgetError(budget_message(report, offenders, max_recompiles,
                                                  per_function=per_function, msg=msg), report)


# -- running a function under torch.compile ------------------------------------------------------

def calls_of(inputs: Iterable[Any]) -> Iterator[tuple]:
    """Each input as positional arguments: a tuple is the arguments, anything else the only one.

    Checked now, iterated lazily: a generator of inputs is not held in memory all at once.
    """
    # A tensor is iterable too, by rows: almost certainly one call meant as [x].
    if isinstance(inputs, torch.Tensor) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs must be an iterable of calls (each a tuple of arguments or a "
                        f"single tensor), got {type(inputs).__name__}; for one call pass [x]")
    return _calls(inputs)


def _calls(inputs: Iterable[Any]) -> Iterator[tuple]:
    count = 0
    for item in inputs:
        count += 1
        yield item if isinstance(item, tuple) else (item,)
    if count == 0:
        raise ValueError("inputs is empty: there is nothing to call")


def check_compile_options(checker: str | None, dynamic: Any, backend: Any) -> None:
    if dynamic is not None and not isinstance(dynamic, bool):
        raise TypeError(f"{prefixed(checker, 'dynamic')} must be None, True or False, "
                        f"got {dynamic!r}")
    check_backend(checker, backend)


@contextlib.contextmanager
def compiled_run(fn: Callable, inputs: Iterable[Any], *, dynamic: bool | None, backend: Any,
                 before_call: Callable[[tuple], None] | None = None, checker: str | None = None
                 ) -> Iterator[tuple[CompileReport, Callable]]:
    """Reset dynamo, compile `fn`, call it on every input while tracking; yield the report and
    the compiled function (whose guards can be read until the block ends).

    Dynamo is reset again on exit, so nothing compiled here stays attached to fn's code, and
    torch's counters are put back as they were. The arguments are checked before the first
    reset; `checker`, the public function called, heads their errors. A function already wrapped
    by torch.compile is unwrapped, so these options apply.
    """
    if not callable(fn):
        raise TypeError(f"{prefixed(checker, 'fn')} must be callable, got {type(fn).__name__}")
    check_compile_options(checker, dynamic, backend)
    calls = calls_of(inputs)
    first = next(calls)  # now, so that empty inputs are refused before the reset
    with _state.fresh_dynamo():
        compiled = torch.compile(torch_dynamo.compiled_target(fn), dynamic=dynamic, backend=backend)
        with track_compiles() as report:
            for args in itertools.chain([first], calls):
                if before_call is not None:
                    before_call(args)
                compiled(*args)
        yield report, compiled


def assert_recompiles_at_most(fn: Callable, inputs: Iterable[Any], max_recompiles: int, *,
                              dynamic: bool | None = None, backend: Any = "eager",
                              msg: str | None = None) -> CompileReport:
    """Compile `fn` afresh, call it on every input, and fail past `max_recompiles` per function.

    inputs: an iterable of calls, each a tuple of positional arguments or a single tensor.
    A function hitting the recompile limit fails whatever the budget. Returns the report.
    """
    __tracebackhide__ = True
    check_count("max_recompiles", max_recompiles)
    with compiled_run(fn, inputs, dynamic=dynamic, backend=backend,
                      checker="assert_recompiles_at_most") as (report, _):
        pass
    _raise_if_over(report, max_recompiles, per_function=True, msg=msg)
    return report
