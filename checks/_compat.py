"""Every private torch API fullgraph touches, in one place and feature-detected.

A torch upgrade that moves one of these should break this file and nothing else. Each accessor
returns a neutral value (None, an empty list) or raises `Unavailable` naming what is missing,
never an AttributeError from deep inside a checker.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Unavailable",
    "TORCH_VERSION",
    "dynamo_config",
    "get_stance",
    "set_stance",
    "get_log_state",
    "set_log_state",
    "DYNAMO_LOGGER",
]

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# `torch._logging.set_logs` sets propagate=False on this logger, so handlers go here.
DYNAMO_LOGGER = "torch._dynamo"


class Unavailable(RuntimeError):
    """This torch lacks a private API a checker needs; the message names it and the version."""


def _missing(what: str) -> Unavailable:
    return Unavailable(f"{what} is not available in torch {torch.__version__}")


def dynamo_config() -> Any:
    return torch._dynamo.config


def get_stance() -> Any:
    """The current dynamo stance object (restorable with `set_stance`), or None before 2.6."""
    eval_frame = torch._dynamo.eval_frame
    return getattr(eval_frame, "_stance", None)


def set_stance(stance: Any) -> None:
    if stance is None:
        return
    setter = getattr(torch._dynamo.eval_frame, "_set_stance", None)
    if setter is None:
        raise _missing("torch._dynamo.eval_frame._set_stance")
    setter(stance)


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


def torch_loggers() -> list[logging.Logger]:
    """Every logger torch has created so far (torch.* and its artifact loggers)."""
    manager = logging.Logger.manager
    return [logger for name, logger in list(manager.loggerDict.items())
            if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger)]


# -- graph breaks --
# Breaks are taken where dynamo records them: InstructionTranslatorBase.log_graph_break runs once
# for every break dynamo resumes after or skips a frame for, with the exception that caused it
# (Unsupported: .gb_type, .msg, .real_stack, the traced user frames). The `graph_breaks` log
# artifact carries the same facts as formatted text, and drops the stack of a repeated break.
__all__ += [
    "DISABLED_GB_TYPES",
    "TORCH_DIR",
    "BreakMessage",
    "graph_break_hook",
    "graph_break_details",
    "split_break_message",
    "graph_break_debug_context",
    "graph_break_id",
    "graph_break_registry_text",
    "graph_break_url",
    "remove_resume_prefix",
    "backend_names",
    "lookup_backend",
]

# The gb_types of calls the user opted out of with torch.compiler.disable (GB0098, GB0099).
DISABLED_GB_TYPES = frozenset({
    "Skip calling `torch.compiler.disable()`d function",
    "Skip inlining `torch.compiler.disable()`d function",
})

# Frames in torch's own files are dynamo's machinery (nn.Module.__call__, polyfills), not user code.
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))

# torch chains a break raised while handling another (a break inside a loop) with this line.
_CHAINED_BREAK = "\n\n*** While handling this graph break, another graph break occurred: ***\n\n"
# unimplemented()'s layout:
#   "<gb_type>\n  Explanation: ...\n  Hint: ...\n  Hint: ...\n\n  Developer debug context: ..."
_BREAK_MESSAGE = re.compile(
    r"(?P<gb_type>[^\n]*)\n  Explanation: (?P<explanation>.*?)(?P<hints>(?:\n  Hint: .*?)*)"
    r"\n\n  Developer debug context:",
    re.S,
)


class _ActiveHooks:
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


_BREAK_HOOKS = _ActiveHooks()


@dataclass(frozen=True)
class BreakMessage:
    """One graph-break message as torch's unimplemented() formats it, split into its parts."""

    gb_type: str
    explanation: str
    hints: tuple[str, ...]


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
        raise _missing("torch._dynamo.symbolic_convert.InstructionTranslatorBase.log_graph_break(exc)")
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


def graph_break_details(exc: BaseException) -> tuple[str, str, list[traceback.FrameSummary]]:
    """(gb_type, torch's full message, traced user frames outermost first) of a break's exception."""
    gb_type = getattr(exc, "gb_type", None) or type(exc).__name__
    message = getattr(exc, "msg", None) or str(exc)
    return gb_type, message, list(getattr(exc, "real_stack", None) or [])


def split_break_message(message: str) -> list[BreakMessage | None]:
    """The chain of breaks in one message, the first cause first; None where the layout differs."""
    parts = []
    for part in message.split(_CHAINED_BREAK):
        match = _BREAK_MESSAGE.match(part)
        if match is None:
            parts.append(None)
            continue
        hints = [_dedent(hint) for hint in match["hints"].split("\n  Hint: ") if hint.strip()]
        parts.append(BreakMessage(match["gb_type"].strip(), _dedent(match["explanation"]), tuple(hints)))
    return parts


def _dedent(text: str) -> str:
    # unimplemented() indents continuation lines by four spaces.
    return re.sub(r"\n {4}", "\n", text).strip()


_DEBUG_CONTEXT = re.compile(r"\n  Developer debug context: (?P<context>[^\n]*)")


def graph_break_debug_context(message: str) -> str | None:
    """The first "Developer debug context" line of a break's message, or None.

    It names the concrete cause where the explanation is empty, as for an exception raised
    while running an op on fake tensors ("argument 'is_causal' must be bool, not SymBool").
    """
    match = _DEBUG_CONTEXT.search(message)
    if match is None:
        return None
    return match["context"].strip() or None


@functools.lru_cache(maxsize=1)
def _graph_break_registry() -> dict[str, tuple[str, dict]]:
    """gb_type -> (GB id, registry entry), from torch/_dynamo/graph_break_registry.json.

    A gb_type listed under several ids maps to the last, as torch's own documentation links do.
    """
    path = Path(torch._dynamo.__file__).resolve().parent / "graph_break_registry.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as registry:
        return {entry["Gb_type"]: (gb_id, entry)
                for gb_id, entries in json.load(registry).items() for entry in entries}


def graph_break_id(gb_type: str) -> str | None:
    """The registry's id for a gb_type ("GB0059"), or None where torch has none."""
    found = _graph_break_registry().get(gb_type)
    return found[0] if found else None


def graph_break_registry_text(gb_type: str) -> BreakMessage | None:
    """The registry's explanation and hints: templates with `{placeholders}`, for when a message
    does not parse."""
    found = _graph_break_registry().get(gb_type)
    if found is None:
        return None
    entry = found[1]
    return BreakMessage(gb_type, entry.get("Explanation", ""), tuple(entry.get("Hints", ())))


def graph_break_url(gb_type: str) -> str | None:
    """The documentation page torch links for a gb_type, or None."""
    link = getattr(torch._dynamo.exc, "get_gbid_documentation_link", None)
    return link(gb_type) if link is not None else None


def remove_resume_prefix(name: str) -> str:
    """`f` for dynamo's resume function `torch_dynamo_resume_in_f_at_12`; other names unchanged."""
    remove = getattr(torch._dynamo.exc, "remove_resume_prefix", None)
    # torch 2.11's returns None for a name without the prefix; 2.13's returns the name.
    return (remove(name) or name) if remove is not None else name


def backend_names() -> list[str]:
    """Every backend name torch.compile accepts, debug and experimental ones included."""
    return torch.compiler.list_backends(exclude_tags=())


def lookup_backend(name: str) -> Callable:
    """The compiler function behind a backend name, to call from a wrapping backend."""
    lookup = getattr(torch._dynamo, "lookup_backend", None)
    if lookup is None:
        raise _missing("torch._dynamo.lookup_backend")
    return lookup(name)


# -- recompiles and guards --
# Compiles are read from torch._dynamo.utils' compilation-metrics deque (one CompilationMetrics per
# compile attempt, recompile_reason holding the newest cache entry's failure); the guard failures of
# every cache entry from the `recompiles` log artifact; the recompile-limit hit from a warning that
# convert_frame logs and from the metrics of the attempt it refused (fail_reason, no co_name).
__all__ += [
    "RECOMPILES_LOGGERS",
    "CONVERT_FRAME_LOGGER",
    "compilation_metrics",
    "retained_compilation_metrics",
    "compilation_metrics_capacity",
    "enable_log_artifact",
    "log_artifact_enabled",
    "current_compile_id",
    "is_recompile_limit_failure",
    "recompile_limit",
    "cache_entries",
    "entry_compile_id",
    "entry_guards",
    "recompiling_locals",
    "compiled_target",
]

# The artifact loggers the recompile reasons go to; `recompiles_verbose` replaces `recompiles`
# when both are on.
RECOMPILES_LOGGERS = ("torch._dynamo.guards.__recompiles", "torch._dynamo.guards.__recompiles_verbose")
CONVERT_FRAME_LOGGER = "torch._dynamo.convert_frame"
# The function in torch._dynamo.guards that logs the reasons, its `frame` the call that failed.
_LOG_REASONS_FUNCTION = "get_and_maybe_log_recompilation_reasons"
# The gb_type of the Unsupported that convert_frame raises when a code object reaches the limit.
_RECOMPILE_LIMIT_GB_TYPE = "Dynamo recompile limit exceeded"


def _dynamo_utils() -> Any:
    import torch._dynamo.utils as utils

    return utils


def compilation_metrics() -> list[Any]:
    """Every CompilationMetrics torch still holds, oldest first (backward compiles included)."""
    getter = getattr(_dynamo_utils(), "get_compilation_metrics", None)
    if getter is None:
        raise _missing("torch._dynamo.utils.get_compilation_metrics")
    return getter()


def compilation_metrics_capacity() -> int | None:
    """How many metrics torch keeps (the newest), or None if it keeps all or cannot say."""
    store = getattr(_dynamo_utils(), "_compilation_metrics", None)
    return getattr(store, "maxlen", None)


@contextlib.contextmanager
def retained_compilation_metrics(at_least: int) -> Iterator[None]:
    """Keep at least `at_least` metrics while inside (torch keeps the last 64), then trim back.

    Trimming keeps the newest entries, so afterwards torch holds what it would have held anyway.
    """
    before = compilation_metrics_capacity()
    set_limit = getattr(_dynamo_utils(), "set_compilation_metrics_limit", None)
    if before is None or set_limit is None:
        yield  # an unbounded or unknown store: nothing to widen
        return
    set_limit(max(before, at_least))
    try:
        yield
    finally:
        set_limit(before)


def enable_log_artifact(name: str) -> None:
    """Turn one artifact on in torch._logging's state, leaving every other setting alone.

    set_logs would reset everything else; `set_log_state` restores the state afterwards.
    """
    state = getattr(torch._logging._internal, "log_state", None)
    if state is None or not hasattr(state, "enable_artifact"):
        raise _missing("torch._logging._internal.log_state.enable_artifact")
    state.enable_artifact(name)


def log_artifact_enabled(name: str) -> bool:
    state = getattr(torch._logging._internal, "log_state", None)
    return state is not None and state.is_artifact_enabled(name)


def current_compile_id() -> str | None:
    """The id ("0/1") of the compile running on this thread, or None outside one."""
    context = getattr(torch._guards, "CompileContext", None)
    current = getattr(context, "current_compile_id", None)
    compile_id = current() if current is not None else None
    return None if compile_id is None else str(compile_id)


def is_recompile_limit_failure(fail_type: str | None, fail_reason: str | None) -> bool:
    """Whether a compile attempt's metrics say it was refused for hitting the recompile limit.

    Without fullgraph, dynamo raises Unsupported with this gb_type and runs the frame eagerly from
    then on; with fullgraph=True (or fail_on_recompile_limit_hit) it raises FailOnRecompileLimitHit.
    """
    return (fail_type == "FailOnRecompileLimitHit"
            or bool(fail_reason) and fail_reason.startswith(_RECOMPILE_LIMIT_GB_TYPE))


def recompile_limit() -> int:
    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", None)
    return config.cache_size_limit if limit is None else limit


def cache_entries(code: types.CodeType) -> list[Any]:
    """The cache entries dynamo holds for a code object, most recently used first."""
    eval_frame = torch._dynamo.eval_frame
    getter = getattr(eval_frame, "_debug_get_cache_entry_list", None)
    if getter is None:
        raise _missing("torch._dynamo.eval_frame._debug_get_cache_entry_list")
    return getter(code)


def entry_compile_id(entry: Any) -> str:
    return str(getattr(entry, "compile_id", "?"))


def entry_guards(entry: Any) -> list[str]:
    """One cache entry's guards as code, one a line, as dynamo's guard manager prints them.

    code_parts holds the guard tree; the symbolic-shape guards ("2 <= L['x'].size()[0]") are
    epilogue lambda guards outside it, so they are read separately, without their comments.
    """
    manager = getattr(entry, "guard_manager", None)
    parts = getattr(manager, "code_parts", None)
    if parts is None:
        raise _missing("CacheEntry.guard_manager.code_parts")
    root = getattr(manager, "root", None)
    epilogue = getattr(root, "get_epilogue_lambda_guards", None)
    shape_parts = [part.split("#")[0].rstrip()
                   for guard in (epilogue() if epilogue is not None else [])
                   for part in guard.verbose_code_parts()]
    return [*parts, *shape_parts]


def recompiling_locals() -> dict[str, Any] | None:
    """The local variables of the call dynamo is logging recompile reasons for, or None.

    Read from the stack while the `recompiles` artifact is emitted: torch's reasons name a size
    guard's bounds but not the size the call had, and the call's frame holds it.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == _LOG_REASONS_FUNCTION:
            return getattr(frame.f_locals.get("frame"), "f_locals", None)
        frame = frame.f_back
    return None


def compiled_target(obj: Any) -> Any:
    """What torch.compile wrapped: the module of an OptimizedModule, the function of a compiled
    function; anything else as it is."""
    optimized_module = getattr(torch._dynamo.eval_frame, "OptimizedModule", None)
    if optimized_module is not None and isinstance(obj, optimized_module):
        return obj._orig_mod
    return getattr(obj, "_torchdynamo_orig_callable", obj)


# -- the process-wide recorder (watch) --
# watch() records every compile in a block without knowing which call started it: a graph break's
# eager frames are taken up to torch.compile's wrapper, the graphs and CUDA-graph skips as dynamo
# and inductor add to their counters, and the skips' reasons from the warning inductor logs for each.
__all__ += [
    "CUDAGRAPH_LOGGER",
    "compile_wrapper_code",
    "is_cudagraph_skip",
    "counter_hook",
    "reset_dynamo",
    "dynamo_counters",
    "entry_code",
    "non_default_dynamo_config",
]

# log_cudagraph_skip_and_bump_counter warns here (the `cudagraphs` artifact) for every skip it counts.
CUDAGRAPH_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"
_CUDAGRAPH_SKIP_FUNCTION = "log_cudagraph_skip_and_bump_counter"


def _wrapper_probe() -> None:
    """Never called: torch.compile wraps it once, to find its wrapper's code object."""


@functools.lru_cache(maxsize=1)
def compile_wrapper_code() -> types.CodeType | None:
    """The code of the wrapper torch.compile puts around a function or module, which every
    wrapper shares: its frame on the stack marks where a compiled call starts. None if unknown.

    Call it outside a compile: wrapping a function inside one would be traced.
    """
    return getattr(torch.compile(_wrapper_probe, backend="eager"), "__code__", None)


def is_cudagraph_skip(record: logging.LogRecord) -> bool:
    """Whether a record on CUDAGRAPH_LOGGER is a skip; its other warnings (too many distinct
    shapes recorded) are not."""
    return record.levelno >= logging.WARNING and record.funcName == _CUDAGRAPH_SKIP_FUNCTION


def dynamo_counters() -> Any:
    """torch._dynamo.utils.counters: a defaultdict of Counters ("stats", "inductor", "graph_break",
    ...) that every compile adds to and only the user clears; torch.compiler.reset leaves it."""
    import torch._dynamo.utils as utils

    counters = getattr(utils, "counters", None)
    if not isinstance(counters, collections.defaultdict):
        raise _missing("torch._dynamo.utils.counters (a defaultdict of Counters)")
    return counters


# The figures counter_hook reports, by the counter torch adds to: {group: {name: figure}} in
# torch._dynamo.utils.counters. unique_graphs goes up once for each FX graph dynamo hands to a
# backend; cudagraph_skips once for each graph inductor compiles without CUDA graphs, logged
# (log_cudagraph_skip_and_bump_counter) or not (a graph on a non-CUDA device).
_COUNTED = {"stats": {"unique_graphs": "graphs"},
            "inductor": {"cudagraph_skips": "cudagraph_skips"}}
_COUNTER_HOOKS = _ActiveHooks()


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


def reset_dynamo() -> None:
    """torch.compiler.reset(), keeping the compile callbacks registered with
    torch._dynamo.callback.on_compile_start / on_compile_end, which the reset drops."""
    import torch._dynamo.callback as callback

    handler = getattr(callback, "callback_handler", None)
    kept = [list(getattr(handler, name, ())) for name in ("start_callbacks", "end_callbacks")]
    torch.compiler.reset()
    for name, callbacks in zip(("start_callbacks", "end_callbacks"), kept):
        if hasattr(handler, name):
            getattr(handler, name)[:] = callbacks


def entry_code(entry: Any) -> types.CodeType | None:
    """The bytecode dynamo produced for one cache entry: the original function rewritten to call
    the compiled graph and the resume functions."""
    return getattr(entry, "code", None)


def non_default_dynamo_config() -> dict[str, Any]:
    """The dynamo config entries whose values differ from their defaults (set in code or by
    environment)."""
    config = torch._dynamo.config
    get_dict = getattr(config, "_get_dict", None)
    if get_dict is None:
        return {}
    # An entry set back to its default still counts as set for torch: compare the values.
    entries = getattr(config, "_config", {})
    return {name: value for name, value in get_dict(skip_default=True).items()
            if name not in entries or value != getattr(entries[name], "default", object())}


# -- CUDA graphs under mode="reduce-overhead" --
# Inductor wraps each graph it compiles with CUDA graphs on in a function of cudagraph trees: one
# CUDAGraphTreeManager per device runs every call of such a function through `_run`, records a new
# CUDAGraphNode in `record_function`, replays one in `execute_node`, and runs the function eagerly
# in its private memory pool (the warmup before a recording) in `run_eager`. A call that does none
# of those ran the compiled code without CUDA graphs (an input it mutates, the re-record limit).
# `_run` is patched, not `run`: each wrapped function holds `run` bound when it was made, while
# every method here is looked up on the manager at each call. Graphs skipped at compile time never
# reach the manager; inductor counts and logs their skips (CUDAGRAPH_LOGGER above).
# Warmups and recordings of one manager allocate from its private memory pool, which keeps its
# segments for as long as the manager lives: the pool's size in the allocator's snapshot is the
# memory the recorded graphs hold.
__all__ += [
    "TreeCall",
    "cudagraph_tree_hook",
    "cudagraph_pool_bytes",
]

_TREE_METHODS = ("_run", "record_function", "execute_node", "run_eager")
_TREE_HOOKS = _ActiveHooks()


@dataclass(frozen=True)
class TreeCall:
    """One call of a CUDA-graph-wrapped function, as cudagraph trees ran it.

    outcome: "record", "replay", "warmup", or "eager" (run without CUDA graphs).
    inputs (recordings only): the shape of each tensor input that has no static address (not a
    parameter, not marked with mark_static_address) and each int input (a dynamic-shape graph's
    sizes), in order: what tells one recording from another.
    pool_bytes (recordings only): the size of the manager's private memory pool after the call;
    None where the allocator's snapshot does not say which pool a segment belongs to.
    """

    outcome: str
    graph_id: int | None
    compile_id: str | None
    inputs: tuple[tuple[int, ...] | int, ...]
    pool_bytes: int | None


class _CallState(threading.local):
    depth = 0
    outcome = "eager"
    graph_id: int | None = None


def _tree_manager_module() -> Any:
    try:
        import torch._inductor.cudagraph_trees as trees
    except ImportError:
        raise _missing("torch._inductor.cudagraph_trees") from None
    if not callable(getattr(trees, "get_manager", None)):
        raise _missing("torch._inductor.cudagraph_trees.get_manager")
    return trees


def _tree_manager_class() -> Any:
    manager = getattr(_tree_manager_module(), "CUDAGraphTreeManager", None)
    if manager is None or not all(callable(getattr(manager, name, None)) for name in _TREE_METHODS):
        raise _missing("CUDAGraphTreeManager." + ", ".join(_TREE_METHODS))
    return manager


def _graph_id(node: Any) -> int | None:
    graph_id = getattr(node, "id", None)  # a GraphID dataclass holding the int
    return getattr(graph_id, "id", graph_id)


def _input_key(manager: Any, function_id: Any, inputs: list[Any]) -> tuple[tuple[int, ...] | int, ...]:
    wrapped = getattr(manager, "ids_to_funcs", {}).get(function_id)
    static = set(getattr(wrapped, "static_input_idxs", ()))
    key: list[tuple[int, ...] | int] = []
    for index, value in enumerate(inputs):
        if isinstance(value, torch.Tensor) and index not in static:
            key.append(tuple(value.shape))
        elif isinstance(value, int) and not isinstance(value, bool):
            key.append(value)
    return tuple(key)


def _pool_bytes(manager: Any) -> int | None:
    pool = getattr(manager, "cuda_graphs_thread_pool", None)
    segments = torch.cuda.memory_snapshot()
    if pool is None or any("segment_pool_id" not in segment for segment in segments):
        return None
    return sum(segment["total_size"] for segment in segments
               if tuple(segment["segment_pool_id"]) == tuple(pool))


def cudagraph_pool_bytes(device: int | None = None) -> int | None:
    """The size of the private pool of the cudagraph trees of `device` (default: the current
    one) on this thread: 0 before they exist, None where it cannot be told."""
    trees = _tree_manager_module()
    index = torch.cuda.current_device() if device is None else device
    manager = trees.get_manager(index, create_if_none_exists=False)
    return 0 if manager is None else _pool_bytes(manager)


@contextlib.contextmanager
def cudagraph_tree_hook(callback: Callable[[TreeCall], None]) -> Iterator[None]:
    """Call `callback(TreeCall)` after each call cudagraph trees run, while inside.

    The manager's methods are patched on its class by the first active hook and put back when the
    last one ends; hooks nest and overlap across threads, and each sees every call. The callback
    runs on the calling thread, outside cudagraph trees' capture lock, and must not raise.
    """
    manager_class = _tree_manager_class()

    def install() -> Callable[[], None]:
        originals = {name: getattr(manager_class, name) for name in _TREE_METHODS}
        for name, method in _patched_tree_methods(originals).items():
            setattr(manager_class, name, functools.wraps(originals[name])(method))

        def undo() -> None:
            for name, method in originals.items():
                setattr(manager_class, name, method)

        return undo

    with _TREE_HOOKS.active(callback, install):
        yield


def _patched_tree_methods(originals: dict[str, Callable]) -> dict[str, Callable]:
    """The manager's methods, telling each active hook what each call did."""
    state = _CallState()

    def _run(self, new_inputs, function_id):
        if state.depth:  # _run calls run, and so itself, once it has ended the current execution
            return originals["_run"](self, new_inputs, function_id)
        # Read now: recording and replay empty the input list.
        key = _input_key(self, function_id, new_inputs)
        state.depth, state.outcome, state.graph_id = 1, "eager", None
        try:
            return originals["_run"](self, new_inputs, function_id)
        finally:
            state.depth = 0
            recorded = state.outcome == "record"
            compile_id = getattr(self, "id_to_compile_id", {}).get(function_id)
            call = TreeCall(state.outcome, state.graph_id,
                            None if compile_id is None else str(compile_id),
                            key if recorded else (), _pool_bytes(self) if recorded else None)
            _TREE_HOOKS.call(call)

    def record_function(self, *args, **kwargs):
        outputs = originals["record_function"](self, *args, **kwargs)
        # record_function makes the node it recorded the current one.
        state.outcome, state.graph_id = "record", _graph_id(getattr(self, "current_node", None))
        return outputs

    def execute_node(self, node, *args, **kwargs):
        state.outcome, state.graph_id = "replay", _graph_id(node)
        return originals["execute_node"](self, node, *args, **kwargs)

    def run_eager(self, *args, **kwargs):
        state.outcome = "warmup"
        return originals["run_eager"](self, *args, **kwargs)

    return {"_run": _run, "record_function": record_function, "execute_node": execute_node,
            "run_eager": run_eager}


# -- collectives --
# Collectives are told apart by their op: the functional ones dynamo puts in graphs
# (_c10d_functional.all_reduce, ...) and the in-place c10d ops eager torch.distributed calls
# (c10d.allreduce_, ...). One TorchDispatchMode sees both as they run: with
# ignore_compile_internals it is off while dynamo compiles and on while compiled graphs run, so
# dynamo keeps compiling under it instead of skipping every frame.
__all__ += [
    "COLLECTIVE_KINDS",
    "collective_kind",
    "op_name",
    "observe_ops",
    "in_backward",
]

_COLLECTIVE_NAMESPACES = frozenset({"_c10d_functional", "_c10d_functional_autograd", "c10d",
                                    "_dtensor"})
# Ops of those namespaces that move no data between ranks.
_NOT_COLLECTIVES = frozenset({"wait_tensor", "_wrap_tensor_autograd", "check_for_nan"})
# Op names (trailing underscore dropped) that differ from the functional collective's name.
_KIND_OF = {
    "allreduce": "all_reduce",
    "allreduce_coalesced": "all_reduce_coalesced",
    "_allgather_base": "all_gather_into_tensor",
    "allgather": "all_gather",
    "allgather_coalesced": "all_gather_coalesced",
    "allgather_into_tensor_coalesced": "all_gather_into_tensor_coalesced",
    "all_gather_into_tensor_out": "all_gather_into_tensor",
    "_reduce_scatter_base": "reduce_scatter_tensor",
    "reduce_scatter_tensor_out": "reduce_scatter_tensor",
    "alltoall_base": "all_to_all_single",
    "alltoall": "all_to_all",
    "shard_dim_alltoall": "all_to_all",
    "monitored_barrier": "barrier",
    "isend": "send",
    "irecv": "recv",
    "recv_any_source": "recv",
}
# Every kind collective_kind returns for the ops torch has today, for validating expectations.
COLLECTIVE_KINDS = frozenset({
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_coalesced",
    "all_gather_into_tensor", "all_gather_into_tensor_coalesced", "reduce_scatter",
    "reduce_scatter_tensor", "reduce_scatter_tensor_coalesced", "all_to_all", "all_to_all_single",
    "broadcast", "reduce", "gather", "scatter", "barrier", "send", "recv", "batch_p2p_ops",
})


def op_name(target: Any) -> str | None:
    """`c10d::allreduce_` for an op overload or packet; None for anything else."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    return getattr(target, "_qualified_op_name", None)


@functools.cache
def _kind_of_name(name: str) -> str | None:
    namespace, _, op = name.partition("::")
    if namespace not in _COLLECTIVE_NAMESPACES or op in _NOT_COLLECTIVES:
        return None
    op = op.removesuffix("_")
    return _KIND_OF.get(op, op)


def collective_kind(target: Any) -> str | None:
    """The collective an op performs, named as torch.distributed names it ("all_reduce",
    "all_gather_into_tensor", ...), or None for an op that is not a collective."""
    name = op_name(target)
    return _kind_of_name(name) if name is not None else None


@contextlib.contextmanager
def observe_ops(callback: Callable[[Any], None]) -> Iterator[None]:
    """Call `callback(op)` for every op dispatched on this thread while inside, eager or run by a
    compiled graph; not for the ops dynamo runs while compiling. The callback must not raise."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if not hasattr(TorchDispatchMode, "ignore_compile_internals"):
        raise _missing("TorchDispatchMode.ignore_compile_internals")

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



# Kineto (the profiler's backend) writes a line to fd 2 whenever a profile starts or stops, from
# C++ and whatever KINETO_LOG_LEVEL says: "USDT:2026-11-26 13:31:53 32761:32761
# SyncActivityProfilerHandler.cpp:52] profiler_start".
_KINETO_LINE = re.compile(rb"^(USDT|STAGE):\d{4}-\d\d-\d\d [^\]]*\] ")


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Hold back what reaches fd 2 in the block, then write it back without kineto's lines.

    Nothing else is lost, only delayed until the block ends: a checker's profile should not print
    into the table `fullgraph check` is drawing.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not _KINETO_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))



# -- standalone repros (fullgraph report --repro) ---------------------------------------------
# A repro script needs the arguments of the frame dynamo compiled when it broke, and how
# torch.compile was called on it; and the script itself hears breaks through torch's log.
__all__ += ["CompilingFrame", "compiling_frame", "compile_start_hook", "is_resume_code",
            "REPRO_BREAK_PROBE", "REPRO_RECOMPILE_PROBE"]

@dataclass(frozen=True)
class CompilingFrame:
    """The frame dynamo is compiling, as it was entered, and how torch.compile was called on it.

    backend: the name torch.compile was given, None for a callable backend; dynamic: as
    torch.compile's argument (False and True patch dynamo's config for the compile, None does not).
    """

    code: types.CodeType
    f_locals: dict[str, Any]
    backend: str | None
    fullgraph: bool
    dynamic: bool | None


def compiling_frame() -> CompilingFrame | None:
    """The frame dynamo is compiling on this thread (the outermost, not an inlined call), or None
    outside a compile. Called from a graph_break_hook or compile_start_hook callback."""
    translator = getattr(torch._dynamo.symbolic_convert, "InstructionTranslator", None)
    try:
        tx = translator.current_tx()
    except AttributeError:  # no compile on this thread: the thread-local is unset
        return None
    return _frame_of(tx)


def _frame_of(tx: Any) -> CompilingFrame:
    # The backend reaches the translator wrapped (WrapBackendDebug), named after what was given.
    name = getattr(getattr(tx.output, "compiler_fn", None), "__name__", None)
    config = torch._dynamo.config
    dynamic = (False if not config.automatic_dynamic_shapes
               else True if not config.assume_static_by_default else None)
    return CompilingFrame(tx.f_code, dict(tx.f_locals),
                          name if name in backend_names() else None, bool(tx.one_graph), dynamic)


_COMPILE_START_HOOKS = _ActiveHooks()


@contextlib.contextmanager
def compile_start_hook(callback: Callable[[CompilingFrame, str | None], None]) -> Iterator[None]:
    """Call `callback(frame, compile_id)` each time dynamo starts tracing a frame it compiles
    (again, with the same id, when a graph break restarts the trace), while inside. The callback
    runs inside dynamo's compile and must not raise."""
    translator = getattr(torch._dynamo.symbolic_convert, "InstructionTranslator", None)
    if translator is None or not hasattr(translator, "run"):
        raise _missing("torch._dynamo.symbolic_convert.InstructionTranslator.run")

    def install() -> Callable[[], None]:
        original = translator.run

        @functools.wraps(original)
        def run(self, *args, **kwargs):
            _COMPILE_START_HOOKS.call(_frame_of(self), current_compile_id())
            return original(self, *args, **kwargs)

        translator.run = run
        return lambda: setattr(translator, "run", original)

    with _COMPILE_START_HOOKS.active(callback, install):
        yield


def is_resume_code(code: types.CodeType) -> bool:
    """Whether `code` is a resume function dynamo made for the rest of a function after a break."""
    return remove_resume_prefix(code.co_name) != code.co_name


# The part of a repro script that hears torch's graph breaks: the `graph_breaks` log artifact's
# first line names the innermost user line ("Graph break in user code at FILE:LINE", or "Graph
# break (user stack suppressed ...) in user code at FILE:LINE" when repeated), and the reason
# holds the gb_type on a line of its own.
REPRO_BREAK_PROBE = '''
@contextlib.contextmanager
def graph_breaks_heard():
    """A list that fills with (file, line, gb_type lines) for each graph break torch logs."""
    heard = []

    class Heard(logging.Handler):
        def emit(self, record):
            first, _, reason = record.getMessage().partition("\\n")
            filename, _, line = first.rpartition(" in user code at ")[2].rpartition(":")
            if first.startswith("Graph break") and line.isdigit():
                reason = reason.replace("Graph Break Reason: ", "", 1)
                heard.append((filename, int(line), [text.strip() for text in reason.splitlines()]))

    handler = Heard(logging.DEBUG)
    torch._logging.set_logs(graph_breaks=True)
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        yield heard
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        torch._logging.set_logs()
'''


# The part of a recompile's repro script that hears recompiles: the `recompiles` artifact reads
# "Recompiling function f in FILE:LINE\n    triggered by the following guard failure(s): ...".
REPRO_RECOMPILE_PROBE = '''
@contextlib.contextmanager
def recompiles_heard():
    """A list that fills with torch's message for each recompile it logs."""
    heard = []

    class Heard(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Recompiling function"):
                heard.append(record.getMessage())

    handler = Heard(logging.DEBUG)
    torch._logging.set_logs(recompiles=True)
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        yield heard
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        torch._logging.set_logs()
'''
