"""Every graph break in one call of a function: where, why, and what torch suggests.

`torch._dynamo.explain` counts graphs: a break at the first statement leaves no reason, a
data-dependent `if` shows only `generic_jump`, and one break two helpers deep counts as three.
`fullgraph=True` stops at the first break and turns on scalar capture, so a `.item()` that breaks
every production run passes there. find_graph_breaks compiles with fullgraph=False and the
caller's config, and records each break where dynamo records it, from the exception that caused
it: its type, torch's explanation and hints, and every user frame down to the breaking line.
"""

from __future__ import annotations

import sys
import traceback
import types
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._args import backend_name, check_backend, check_callable
from ._compat import breaks as torch_breaks
from ._compat import dynamo as torch_dynamo
from ._compat import hooks as torch_hooks
from ._frames import is_user_file
from ._message import CheckFailure, Frame, check_msg, counted, format_failure, function_name
from ._state import fresh_dynamo, preserved_torch_state

__all__ = [
    "GraphBreak",
    "GraphBreakReport",
    "GraphBreakError",
    "find_graph_breaks",
    "assert_no_graph_breaks",
]
# Not exported, shared with the package's other recorders and messages (watch, collectives, the
# pytest plugin): OP_KINDS, user_frames_above_dynamo, graph_break_of, break_key, break_entry.

# What counts as an op in a captured graph: everything but placeholders, get_attr and output.
OP_KINDS = frozenset({"call_function", "call_method", "call_module"})
# A user frame, and whether it is a dynamo resume function (which continues its caller's call).
_StackEntry = tuple[traceback.FrameSummary, bool]


@dataclass(frozen=True)
class GraphBreak:
    """One break. `frames` run outermost first, from the function checked to the breaking line."""

    gb_type: str
    gb_id: str | None
    explanation: str
    hints: tuple[str, ...]
    frames: tuple[Frame, ...]
    # A torch.compiler.disable'd call: a deliberate break, listed but not counted.
    disabled: bool = False
    # The gb_type of the break that led to this one (a break inside a loop skips the whole frame).
    caused_by: str | None = None
    # torch's whole message: explanation, hints, developer context and any chained breaks.
    reason: str = ""
    url: str | None = None
    # How many times dynamo met this break: once per compile that traced it. find_graph_breaks
    # makes one call, so 1 there; watch() counts every compile in its block.
    count: int = field(default=1, compare=False)

    @property
    def location(self) -> Frame:
        return self.frames[-1]

    def to_dict(self) -> dict:
        return {"gb_type": self.gb_type, "gb_id": self.gb_id, "explanation": self.explanation,
                "hints": list(self.hints), "frames": [frame.to_dict() for frame in self.frames],
                "disabled": self.disabled, "caused_by": self.caused_by, "reason": self.reason,
                "url": self.url, "count": self.count}


@dataclass(frozen=True)
class GraphBreakReport:
    """What one compiled call did: the breaks, the graphs dynamo captured and the call's result.

    `output` is what the function returned and `error` what it raised instead (breaks seen before
    the crash are kept); neither is part of `to_dict()`. `graph_break_count` counts the breaks
    that are not torch.compiler.disable'd calls; `disabled_count` counts those.
    """

    function: str
    backend: str
    breaks: tuple[GraphBreak, ...]
    ops_per_graph: tuple[int, ...]
    output: Any = field(default=None, repr=False, compare=False)
    error: Exception | None = field(default=None, repr=False, compare=False)
    graph_count: int = field(init=False)
    graph_break_count: int = field(init=False)
    disabled_count: int = field(init=False)

    def __post_init__(self) -> None:
        disabled = sum(brk.disabled for brk in self.breaks)
        object.__setattr__(self, "graph_count", len(self.ops_per_graph))
        object.__setattr__(self, "graph_break_count", len(self.breaks) - disabled)
        object.__setattr__(self, "disabled_count", disabled)

    def to_dict(self) -> dict:
        return {"function": self.function, "backend": self.backend,
                "graph_count": self.graph_count, "graph_break_count": self.graph_break_count,
                "disabled_count": self.disabled_count, "ops_per_graph": list(self.ops_per_graph),
                "breaks": [brk.to_dict() for brk in self.breaks],
                "error": None if self.error is None else _describe(self.error)}

    def __str__(self) -> str:
        ops = ", ".join(map(str, self.ops_per_graph))
        headline = (f"{self.function} (backend {self.backend}): "
                    f"{counted(self.graph_count, 'graph')} ({ops or 'no'} ops), "
                    f"{counted(self.graph_break_count, 'graph break')}, "
                    f"{counted(self.disabled_count, 'disabled call')}")
        entries = [break_entry(brk, url=True) for brk in self.breaks]
        text = format_failure(headline, entries)
        return text if self.error is None else f"{text}\nThe call raised {_describe(self.error)}"


class GraphBreakError(CheckFailure):
    """More graph breaks than allowed; `.report` is the GraphBreakReport."""


def find_graph_breaks(fn: Callable, *args: Any, backend: str | Callable = "eager",
                      **kwargs: Any) -> GraphBreakReport:
    """Compile `fn` (a function, bound method or nn.Module), call it once with args and kwargs,
    and report every graph break.

    Dynamo is reset before and after, so earlier compiles neither hide breaks nor outlive the
    check, and torch's config, stance, logging and counters are left as they were. The stance is
    "default" during the call, so a "force_eager" stance cannot make a broken function look
    clean. An exception from the call is kept in the report's `error`, not raised.
    """
    check_callable("find_graph_breaks", fn)
    name = function_name(fn)
    compiler = _compiler(backend)
    ops_per_graph: list[int] = []
    seen: list[GraphBreak] = []

    def record_graph(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        ops_per_graph.append(sum(node.op in OP_KINDS for node in gm.graph.nodes))
        return compiler(gm, example_inputs)

    def record_break(exc: BaseException, code: types.CodeType, lineno: int | None) -> None:
        above = user_frames_above_dynamo(_is_call_compiled)
        if above is None:  # a compile on another thread
            return
        seen.append(graph_break_of(exc, code, lineno, above))

    output = error = None
    with preserved_torch_state(), fresh_dynamo(), torch_hooks.graph_break_hook(record_break):
        torch.compiler.set_stance("default")
        try:
            output = _call_compiled(torch.compile(fn, backend=record_graph), args, kwargs)
        except Exception as exc:  # kept in the report, so the breaks seen before it are too
            error = exc
    return GraphBreakReport(name, backend_name(backend), _unique(seen), tuple(ops_per_graph),
                            output=output, error=error)


def assert_no_graph_breaks(fn: Callable, *args: Any, msg: str | None = None,
                           backend: str | Callable = "eager", max_breaks: int = 0,
                           **kwargs: Any) -> GraphBreakReport:
    """Raise GraphBreakError if calling compiled `fn(*args, **kwargs)` breaks more than
    `max_breaks` times; return the report (its `output` is fn's result) otherwise.

    torch.compiler.disable'd calls are deliberate and not counted. If fn raises, that exception
    is re-raised, with the breaks seen before it added as a note.
    """
    __tracebackhide__ = True
    if isinstance(max_breaks, bool) or not isinstance(max_breaks, int):
        raise TypeError(f"assert_no_graph_breaks: max_breaks must be an int, got {max_breaks!r}")
    if max_breaks < 0:
        raise ValueError(f"assert_no_graph_breaks: max_breaks must be >= 0, got {max_breaks}")
    check_msg("assert_no_graph_breaks", msg)
    report = find_graph_breaks(fn, *args, backend=backend, **kwargs)
    if report.error is not None:
        if report.breaks and hasattr(report.error, "add_note"):  # Python 3.11+
            seen = f"{counted(len(report.breaks), 'graph break')} in {report.function} before it raised:"
            report.error.add_note(format_failure(seen, [break_entry(brk) for brk in report.breaks]))
        raise report.error
    if report.graph_break_count > max_breaks:
        raise GraphBreakError(_failure_message(report, max_breaks, msg), report)
    return report


def _call_compiled(compiled: Callable, args: tuple, kwargs: dict) -> Any:
    # Its frame marks where the user's call starts on the stack; see user_frames_above_dynamo.
    return compiled(*args, **kwargs)


def _is_call_compiled(frame: types.FrameType) -> bool:
    return frame.f_code is _call_compiled.__code__


def user_frames_above_dynamo(is_entry: Callable[[types.FrameType], bool]
                             ) -> list[_StackEntry] | None:
    """The user frames running eagerly between the compiled call and the frame dynamo is compiling.

    `is_entry` tells the frame that made the compiled call. A helper compiled as its own frame
    (after its caller broke) carries only its own stack; the caller's frame, still on the Python
    stack, completes it. None if no entry frame is on the stack.
    """
    frames = []
    frame = sys._getframe(1)
    while frame is not None and not is_entry(frame):
        frames.append(frame)
        frame = frame.f_back
    if frame is None:
        return None
    return [(traceback.FrameSummary(f.f_code.co_filename, f.f_lineno, f.f_code.co_name,
                                    lookup_line=False), _is_resume(f.f_code.co_name))
            for f in reversed(frames) if f.f_lineno is not None and is_user_file(f.f_code.co_filename)]


def graph_break_of(exc: BaseException, code: types.CodeType, lineno: int | None,
                   above: list[_StackEntry]) -> GraphBreak:
    """The break graph_break_hook saw (its arguments), `above` being the user frames
    user_frames_above_dynamo found."""
    return _graph_break(*_break_event(exc, code, lineno, above))


def _break_event(exc: BaseException, code: types.CodeType, lineno: int | None,
                 above: list[_StackEntry]) -> tuple[str, str, list[_StackEntry]]:
    """(gb_type, torch's message, user stack outermost first) of one break graph_break_hook saw."""
    gb_type, message, traced = torch_breaks.graph_break_details(exc)
    if not traced:  # a break at the first instruction has no traced frame yet
        traced = [traceback.FrameSummary(code.co_filename, lineno or code.co_firstlineno,
                                         code.co_name, lookup_line=False)]
    # Of the traced frames only the first, the one dynamo compiles, can be a resume function,
    # and torch may have renamed it in its own stack already: its code has the real name.
    resumes = [_is_resume(code.co_name)] + [False] * (len(traced) - 1)
    return gb_type, message, above + list(zip(traced, resumes))


def _is_resume(code_name: str) -> bool:
    return torch_breaks.remove_resume_prefix(code_name) != code_name


def _graph_break(gb_type: str, message: str, stack: list[_StackEntry]) -> GraphBreak:
    chain = torch_breaks.split_break_message(message)
    parsed = chain[-1] or torch_breaks.graph_break_registry_text(gb_type)
    first_cause = chain[0].gb_type if len(chain) > 1 and chain[0] is not None else None
    return GraphBreak(
        gb_type=gb_type,
        gb_id=torch_breaks.graph_break_id(gb_type),
        explanation=parsed.explanation if parsed else "",
        hints=parsed.hints if parsed else (),
        frames=_user_frames(stack),
        disabled=gb_type in torch_breaks.DISABLED_GB_TYPES,
        caused_by=first_cause,
        reason=message,
        url=torch_breaks.graph_break_url(gb_type),
    )


def _user_frames(stack: list[_StackEntry]) -> tuple[Frame, ...]:
    """Outermost first, without torch's frames, with dynamo's resume functions folded back into
    the function they resume (`torch_dynamo_resume_in_f_at_12` is the rest of `f`, called by `f`)."""
    frames: list[Frame] = []
    for summary, resumes in stack:
        if not is_user_file(summary.filename):
            continue
        name = torch_breaks.remove_resume_prefix(summary.name)
        if resumes and frames and (frames[-1].filename, frames[-1].function) == (summary.filename, name):
            frames.pop()  # the same call of the function, further down
        frames.append(Frame.at(summary.filename, summary.lineno, name))
    return tuple(frames)


def _unique(breaks: Iterable[GraphBreak]) -> tuple[GraphBreak, ...]:
    """One entry per break site. A helper that breaks is traced twice, inside its caller and then
    as its own frame; a break in a loop is reported as "graph break in loop" and then again by
    its cause: same frames, same first cause, one break."""
    seen, unique = set(), []
    for brk in breaks:
        key = break_key(brk)
        if key not in seen:
            seen.add(key)
            unique.append(brk)
    return tuple(unique)


def break_key(brk: GraphBreak) -> Hashable:
    """Two records of one break site share this key (see _unique)."""
    return brk.caused_by or brk.gb_type, brk.frames


def _failure_message(report: GraphBreakReport, limit: int, msg: str | None) -> str:
    breaks = [brk for brk in report.breaks if not brk.disabled]
    headline = f"{counted(len(breaks), 'graph break')} in {report.function} (limit {limit})"
    hint = ("fix them in order, as one break can cause the next; this error's .report has "
            "torch's whole message and documentation link for each")
    return format_failure(headline, [break_entry(brk) for brk in breaks], hint, msg)


def break_entry(brk: GraphBreak, *, url: bool = False) -> list[str]:
    heading = f"{brk.location.location()}: {brk.gb_type}"
    if brk.caused_by:
        heading += f" (caused by: {brk.caused_by})"
    if brk.disabled:
        heading += " (deliberate, not counted)"
    lines = [heading, brk.location.line]
    lines += [f"called from {frame.location()}" for frame in reversed(brk.frames[:-1])]
    lines.append(brk.explanation.splitlines()[0] if brk.explanation else "")
    if brk.hints:
        lines.append(f"Hint: {brk.hints[0]}")
    if url and brk.url:
        lines.append(brk.url)
    return lines


def _compiler(backend: str | Callable) -> Callable:
    check_backend("find_graph_breaks", backend)
    return torch_dynamo.lookup_backend(backend) if isinstance(backend, str) else backend


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"

