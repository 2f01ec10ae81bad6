"""Hooks into torch while it runs: dynamo's graph-break recording, its counters, op dispatch and
autograd; and torch's loggers and logging state, which the checkers listen to and restore.

Wraps torch._dynamo.symbolic_convert (InstructionTranslatorBase.log_graph_break(exc), 2.11 to
2.15), torch._dynamo.utils.counters, TorchDispatchMode.ignore_compile_internals,
torch._C._current_graph_task_id and torch._logging._internal.log_state. None of it reads torch's
message text.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import logging
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import missing
from .dynamo import dynamo_counters

__all__ = [
    "ActiveHooks",
    "graph_break_hook",
    "counter_hook",
    "observe_ops",
    "in_backward",
    "DYNAMO_LOGGER",
    "torch_loggers",
    "get_log_state",
    "set_log_state",
    "enable_log_artifact",
    "log_artifact_enabled",
]


class ActiveHooks:
    """The callbacks of the hooks of one kind active on any thread, behind one patch of torch.

    The first hook to enter installs the patch, the last to leave undoes it. The lock guards only
    the list and the patch, never dynamo's or the caller's code, so one thread's hook does not hold
    up another thread's; hooks nest, and every active callback sees every event.
    """

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []
        self._undo: Callable[[], None] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self, callback: Callable[..., None], install: Callable[[], Callable[[], None]]
               ) -> Iterator[None]:
        """Keep `callback` active inside; `install()` patches torch and returns what undoes it."""
        with self._lock:
            if not self._callbacks:
                self._undo = install()
            self._callbacks.append(callback)
        try:
            yield
        finally:
            with self._lock:
                # By identity, the latest first: the same callback may be active twice.
                del self._callbacks[max(i for i, c in enumerate(self._callbacks) if c is callback)]
                if not self._callbacks:
                    self._undo()

    def call(self, *args: Any) -> None:
        for callback in tuple(self._callbacks):
            callback(*args)


# -- graph breaks --
# Breaks are taken where dynamo records them: InstructionTranslatorBase.log_graph_break runs once
# for every break dynamo resumes after or skips a frame for, with the exception that caused it
# (Unsupported: .gb_type, .msg, .real_stack, the traced user frames). The `graph_breaks` log
# artifact carries the same facts as formatted text, and drops the stack of a repeated break.

_BREAK_HOOKS = ActiveHooks()


@contextlib.contextmanager
def graph_break_hook(callback: Callable[[BaseException, types.CodeType, int | None], None]
                     ) -> Iterator[None]:
    """Call `callback(exc, code, lineno)` for each graph break dynamo records, while inside.

    `code` and `lineno` are the frame dynamo was tracing, for breaks whose exception has no stack.
    Hooks nest and overlap across threads; each sees every break recorded while it is active, on
    any thread. The callback runs inside dynamo's compile and must not raise.
    """
    def install() -> Callable[[], None]:
        # Only the first active hook installs, so the method found here is dynamo's own.
        translator, original = _log_graph_break()
        translator.log_graph_break = _dispatching_log_graph_break(original)
        return lambda: setattr(translator, "log_graph_break", original)

    with _BREAK_HOOKS.active(callback, install):
        yield


def _log_graph_break() -> tuple[type, Callable]:
    """The class that records graph breaks, and its log_graph_break(exc)."""
    symbolic_convert = getattr(torch._dynamo, "symbolic_convert", None)
    translator = getattr(symbolic_convert, "InstructionTranslatorBase", None)
    method = getattr(translator, "log_graph_break", None)
    if method is None or "exc" not in inspect.signature(method).parameters:
        raise missing("torch._dynamo.symbolic_convert.InstructionTranslatorBase.log_graph_break(exc)")
    return translator, method


def _dispatching_log_graph_break(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def log_graph_break(self, *args, **kwargs):
        exc = signature.bind(self, *args, **kwargs).arguments["exc"]
        # dynamo logs an exception once; `logged` marks the ones it has already seen.
        if not getattr(exc, "logged", False):
            _BREAK_HOOKS.call(exc, self.f_code, getattr(self, "lineno", None))
        return original(self, *args, **kwargs)

    return log_graph_break


# -- counters --
# The figures counter_hook reports, by the counter torch adds to: {group: {name: figure}} in
# torch._dynamo.utils.counters. unique_graphs goes up once for each FX graph dynamo hands to a
# backend; cudagraph_skips once for each graph inductor compiles without CUDA graphs, logged
# (log_cudagraph_skip_and_bump_counter) or not (a graph on a non-CUDA device).
_COUNTED = {"stats": {"unique_graphs": "graphs"},
            "inductor": {"cudagraph_skips": "cudagraph_skips"}}
_COUNTER_HOOKS = ActiveHooks()


class _HeardCounter(collections.Counter):
    """A group of torch's counters that tells the active counter hooks of each increase of a
    counted figure; a copy of it (torch copies groups to diff them) tells nobody."""

    def __setitem__(self, key: str, value: Any) -> None:
        figure = _counted_figure(self, key)
        increase = value - self[key] if figure is not None else 0
        super().__setitem__(key, value)
        if increase > 0:
            _COUNTER_HOOKS.call(figure, increase)


def _counted_figure(group: collections.Counter, key: str) -> str | None:
    for name, figures in _COUNTED.items():
        if key in figures and dynamo_counters().get(name) is group:
            return figures[key]
    return None


@contextlib.contextmanager
def counter_hook(callback: Callable[[str, int], None]) -> Iterator[None]:
    """Call `callback(figure, increase)` each time torch adds to its count of graphs ("graphs")
    or of CUDA-graph skips ("cudagraph_skips"), while inside, on any thread.

    Heard as torch counts, not read from its counters afterwards: suites built on
    torch._dynamo.test_case.TestCase clear the counters in setUp and tearDown, and a difference
    of readings would lose what was counted before a clear. While a hook is active every group of
    torch._dynamo.utils.counters, those a clear makes anew included, is a _HeardCounter; the last
    hook to leave puts plain Counters back, holding the same counts.
    """
    def install() -> Callable[[], None]:
        counters = dynamo_counters()
        factory = counters.default_factory
        counters.default_factory = _HeardCounter
        for name in _COUNTED:
            counters[name] = _HeardCounter(counters[name])

        def undo() -> None:
            counters.default_factory = factory
            for name, group in list(counters.items()):
                if type(group) is _HeardCounter:
                    counters[name] = collections.Counter(group)

        return undo

    with _COUNTER_HOOKS.active(callback, install):
        yield


# -- ops and autograd --
# One TorchDispatchMode sees every op as it runs: with ignore_compile_internals it is off while
# dynamo compiles and on while compiled graphs run, so dynamo keeps compiling under it instead of
# skipping every frame.

@contextlib.contextmanager
def observe_ops(callback: Callable[[Any], None]) -> Iterator[None]:
    """Call `callback(op)` for every op dispatched on this thread while inside, eager or run by a
    compiled graph; not for the ops dynamo runs while compiling. The callback must not raise."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if not hasattr(TorchDispatchMode, "ignore_compile_internals"):
        raise missing("TorchDispatchMode.ignore_compile_internals")

    class _Observer(TorchDispatchMode):
        @classmethod
        def ignore_compile_internals(cls) -> bool:
            return True

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            callback(func)
            return func(*args, **(kwargs or {}))

    with _Observer():
        yield


def in_backward() -> bool:
    """Whether this thread is running a backward pass for the autograd engine."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


# -- loggers and logging state --

# `torch._logging.set_logs` sets propagate=False on this logger, so handlers go here.
DYNAMO_LOGGER = "torch._dynamo"


def torch_loggers() -> list[logging.Logger]:
    """Every logger torch has created so far (torch.* and its artifact loggers)."""
    manager = logging.Logger.manager
    return [logger for name, logger in list(manager.loggerDict.items())
            if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger)]


def get_log_state() -> Any:
    """A copy of torch._logging's state (what set_logs enabled), or None if it has none."""
    internal = torch._logging._internal
    state = getattr(internal, "log_state", None)
    if state is None:
        return None
    copy = type(state)()
    copy.log_qname_to_level.update(state.log_qname_to_level)
    copy.artifact_names.update(state.artifact_names)
    return copy


def set_log_state(state: Any) -> None:
    if state is None:
        return
    internal = torch._logging._internal
    internal.log_state.log_qname_to_level.clear()
    internal.log_state.log_qname_to_level.update(state.log_qname_to_level)
    internal.log_state.artifact_names.clear()
    internal.log_state.artifact_names.update(state.artifact_names)


def enable_log_artifact(name: str) -> None:
    """Turn one artifact on in torch._logging's state, leaving every other setting alone.

    set_logs would reset everything else; `set_log_state` restores the state afterwards.
    """
    state = getattr(torch._logging._internal, "log_state", None)
    if state is None or not hasattr(state, "enable_artifact"):
        raise missing("torch._logging._internal.log_state.enable_artifact")
    state.enable_artifact(name)


def log_artifact_enabled(name: str) -> bool:
    state = getattr(torch._logging._internal, "log_state", None)
    return state is not None and state.is_artifact_enabled(name)
