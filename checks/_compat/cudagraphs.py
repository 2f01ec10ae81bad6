"""CUDA graphs under mode="reduce-overhead": cudagraph trees, their memory pool, and inductor's
messages for a graph it runs without CUDA graphs.

Wraps torch._inductor.cudagraph_trees (get_manager, CUDAGraphTreeManager's _run,
record_function, execute_node, run_eager, 2.11 to 2.15) and reads inductor's skip messages
("skipping cudagraphs due to mutated inputs (1 instances). Found from : ..."), worded in
torch/_inductor/cudagraph_utils.py, cudagraph_trees.py, compile_fx.py and output_code.py; each
version's wording is in tests/checks/test_torch_text.py.

Inductor wraps each graph it compiles with CUDA graphs on in a function of cudagraph trees: one
CUDAGraphTreeManager per device runs every call of such a function through `_run`, records a new
CUDAGraphNode in `record_function`, replays one in `execute_node`, and runs the function eagerly
in its private memory pool (the warmup before a recording) in `run_eager`. A call that does none
of those ran the compiled code without CUDA graphs (an input it mutates, the re-record limit).
`_run` is patched, not `run`: each wrapped function holds `run` bound when it was made, while
every method here is looked up on the manager at each call. Graphs skipped at compile time never
reach the manager; inductor counts and logs their skips (CUDAGRAPH_LOGGER).
Warmups and recordings of one manager allocate from its private memory pool, which keeps its
segments for as long as the manager lives: the pool's size in the allocator's snapshot is the
memory the recorded graphs hold.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import missing
from .hooks import ActiveHooks

__all__ = [
    "CUDAGRAPH_LOGGER",
    "is_cudagraph_skip",
    "split_skip_message",
    "skip_kind",
    "TreeCall",
    "cudagraph_tree_hook",
    "cudagraph_pool_bytes",
]

# -- skips --

# log_cudagraph_skip_and_bump_counter warns here (the `cudagraphs` artifact) for every skip it counts.
CUDAGRAPH_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"
_CUDAGRAPH_SKIP_FUNCTION = "log_cudagraph_skip_and_bump_counter"

# (kind, what torch's message says) for each skip reason inductor words, the first match wins.
_SKIP_KINDS = [
    ("mutated inputs", re.compile(r"mutated inputs")),
    ("input storage mutation", re.compile(r"input storage mutation")),
    ("CPU tensors", re.compile(r"cpu device")),
    ("multiple devices", re.compile(r"multiple devices")),
    ("incompatible op", re.compile(r"incompatible op")),
    ("dynamic shapes", re.compile(r"symbolic shapes")),
    ("non-tensor inputs", re.compile(r"non-Tensor inputs")),
    ("re-record limit", re.compile(r"re-recording limit")),
    ("caching allocator off", re.compile(r"caching allocator")),
]


def is_cudagraph_skip(record: logging.LogRecord) -> bool:
    """Whether a record on CUDAGRAPH_LOGGER is a skip; its other warnings (too many distinct
    shapes recorded) are not."""
    return record.levelno >= logging.WARNING and record.funcName == _CUDAGRAPH_SKIP_FUNCTION


def split_skip_message(text: str) -> tuple[str, str]:
    """(the reason, the stack trace after "Found from") of one skip message."""
    message, _, stack = text.partition("Found from")
    return message.strip().rstrip(".").strip(), stack


def skip_kind(message: str) -> str:
    """mutated inputs, input storage mutation, CPU tensors, multiple devices, incompatible op,
    dynamic shapes, non-tensor inputs, re-record limit, caching allocator off, or other."""
    return next((kind for kind, pattern in _SKIP_KINDS if pattern.search(message)), "other")


# -- cudagraph trees --

_TREE_METHODS = ("_run", "record_function", "execute_node", "run_eager")
_TREE_HOOKS = ActiveHooks()


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
        raise missing("torch._inductor.cudagraph_trees") from None
    if not callable(getattr(trees, "get_manager", None)):
        raise missing("torch._inductor.cudagraph_trees.get_manager")
    return trees


def _tree_manager_class() -> Any:
    manager = getattr(_tree_manager_module(), "CUDAGraphTreeManager", None)
    if manager is None or not all(callable(getattr(manager, name, None)) for name in _TREE_METHODS):
        raise missing("CUDAGraphTreeManager." + ", ".join(_TREE_METHODS))
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
