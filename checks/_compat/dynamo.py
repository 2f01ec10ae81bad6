"""dynamo's state: config, stance, reset, counters, compilation metrics, cache entries, compile
ids, backends, and the marks put on inputs.

Wraps torch._dynamo.config, .eval_frame (_stance, _set_stance, _debug_get_cache_entry_list,
OptimizedModule), .utils (get_compilation_metrics, the _compilation_metrics deque, counters),
.callback, .lookup_backend, .mark_dynamic, and torch._guards.CompileContext, 2.11 to 2.15. The
only text read is a compile id ("0/1", "!0/0/1" under compiled autograd), which every version
writes one way.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import re
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import missing

__all__ = [
    "dynamo_config",
    "non_default_dynamo_config",
    "recompile_limit",
    "get_stance",
    "set_stance",
    "reset_dynamo",
    "dynamo_counters",
    "compilation_metrics",
    "compilation_metrics_capacity",
    "retained_compilation_metrics",
    "current_compile_id",
    "compile_order",
    "frame_of_compile",
    "cache_entries",
    "entry_compile_id",
    "entry_code",
    "compiled_target",
    "compile_wrapper_code",
    "backend_names",
    "lookup_backend",
    "mark_dynamic",
]


# -- config and stance --

def dynamo_config() -> Any:
    return torch._dynamo.config


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


def recompile_limit() -> int:
    config = torch._dynamo.config
    limit = getattr(config, "recompile_limit", None)
    return config.cache_size_limit if limit is None else limit


def get_stance() -> Any:
    """The current dynamo stance object (restorable with `set_stance`), or None before 2.6."""
    eval_frame = torch._dynamo.eval_frame
    return getattr(eval_frame, "_stance", None)


def set_stance(stance: Any) -> None:
    if stance is None:
        return
    setter = getattr(torch._dynamo.eval_frame, "_set_stance", None)
    if setter is None:
        raise missing("torch._dynamo.eval_frame._set_stance")
    setter(stance)


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


# -- counters and compilation metrics --
# Compiles are read from torch._dynamo.utils' compilation-metrics deque: one CompilationMetrics per
# compile attempt, recompile_reason holding the newest cache entry's failure.

def _dynamo_utils() -> Any:
    import torch._dynamo.utils as utils

    return utils


def dynamo_counters() -> Any:
    """torch._dynamo.utils.counters: a defaultdict of Counters ("stats", "inductor", "graph_break",
    ...) that every compile adds to and only the user clears; torch.compiler.reset leaves it."""
    counters = getattr(_dynamo_utils(), "counters", None)
    if not isinstance(counters, collections.defaultdict):
        raise missing("torch._dynamo.utils.counters (a defaultdict of Counters)")
    return counters


def compilation_metrics() -> list[Any]:
    """Every CompilationMetrics torch still holds, oldest first (backward compiles included)."""
    getter = getattr(_dynamo_utils(), "get_compilation_metrics", None)
    if getter is None:
        raise missing("torch._dynamo.utils.get_compilation_metrics")
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


# -- compile ids --

def current_compile_id() -> str | None:
    """The id ("0/1") of the compile running on this thread, or None outside one."""
    context = getattr(torch._guards, "CompileContext", None)
    current = getattr(context, "current_compile_id", None)
    compile_id = current() if current is not None else None
    return None if compile_id is None else str(compile_id)


def compile_order(compile_id: str) -> tuple[int, ...]:
    """"3/2" -> (3, 2): sorts compile ids in the order dynamo made them."""
    return tuple(int(number) for number in re.findall(r"\d+", compile_id))


def frame_of_compile(compile_id: str) -> str:
    """"3/2" -> "3": the frame part of a compile id, shared by every compile of one code object."""
    return compile_id.rsplit("/", 1)[0]


# -- cache entries and compiled callables --

def cache_entries(code: types.CodeType) -> list[Any]:
    """The cache entries dynamo holds for a code object, most recently used first."""
    eval_frame = torch._dynamo.eval_frame
    getter = getattr(eval_frame, "_debug_get_cache_entry_list", None)
    if getter is None:
        raise missing("torch._dynamo.eval_frame._debug_get_cache_entry_list")
    return getter(code)


def entry_compile_id(entry: Any) -> str:
    return str(getattr(entry, "compile_id", "?"))


def entry_code(entry: Any) -> types.CodeType | None:
    """The bytecode dynamo produced for one cache entry: the original function rewritten to call
    the compiled graph and the resume functions."""
    return getattr(entry, "code", None)


def compiled_target(obj: Any) -> Any:
    """What torch.compile wrapped: the module of an OptimizedModule, the function of a compiled
    function; anything else as it is."""
    optimized_module = getattr(torch._dynamo.eval_frame, "OptimizedModule", None)
    if optimized_module is not None and isinstance(obj, optimized_module):
        return obj._orig_mod
    return getattr(obj, "_torchdynamo_orig_callable", obj)


def _wrapper_probe() -> None:
    """Never called: torch.compile wraps it once, to find its wrapper's code object."""


@functools.lru_cache(maxsize=1)
def compile_wrapper_code() -> types.CodeType | None:
    """The code of the wrapper torch.compile puts around a function or module, which every
    wrapper shares: its frame on the stack marks where a compiled call starts. None if unknown.

    Call it outside a compile: wrapping a function inside one would be traced.
    """
    return getattr(torch.compile(_wrapper_probe, backend="eager"), "__code__", None)


# -- backends and marks --

def backend_names() -> list[str]:
    """Every backend name torch.compile accepts, debug and experimental ones included."""
    return torch.compiler.list_backends(exclude_tags=())


def lookup_backend(name: str) -> Callable:
    """The compiler function behind a backend name, to call from a wrapping backend."""
    lookup = getattr(torch._dynamo, "lookup_backend", None)
    if lookup is None:
        raise missing("torch._dynamo.lookup_backend")
    return lookup(name)


def mark_dynamic(tensor: torch.Tensor, axis: int) -> None:
    """torch._dynamo.mark_dynamic, which no public module exposes from 2.11 to 2.15."""
    torch._dynamo.mark_dynamic(tensor, axis)
