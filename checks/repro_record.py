"""What a standalone repro needs from the program's process: the arguments each function dynamo
compiled was called with, and how torch.compile was called on it.

`fullgraph report --repro` records them in the child that runs the program (checks/_report_run.py)
and writes the scripts afterwards (checks/repro.py). Recording happens as dynamo starts each
compile, inside it: only what describes a value (a tensor's shape, strides, dtype, device;
a Python value's repr) is kept, never the value itself.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fullgraph.model.launch import read_written

from ._compat import dynamo as torch_dynamo
from ._compat import hooks as torch_hooks
from ._compat import repro as torch_repro

__all__ = ["EXACT_VALUES", "MODULE_PARAMETERS", "MAX_COMPILES", "DEFAULT_STATE", "InputRecorder",
           "describe", "global_state", "global_state_kept", "read_recorded"]

EXACT_VALUES = 64  # integer and bool tensors up to this size keep their values (positions, masks)
MODULE_PARAMETERS = 100_000  # a torch.nn module up to this size is rebuilt from its repr
_DEPTH = 4  # containers nested deeper than this are not rebuilt


MAX_COMPILES = 16  # compiles of one function whose arguments are kept


class InputRecorder:
    """Records the arguments of each function dynamo compiles, at each of its first MAX_COMPILES
    compiles, with how torch.compile was called on it, the global state dynamo guards on (grad
    mode, default dtype, ...: global_state) of each of those compiles and which of them met a
    graph break.

    to_dict(): {"frames": [{filename, function, firstlineno, closure, compile, argv (sys.argv at
    its first compile), arguments (those of its first compile), compiles: {compile_id:
    arguments}, global_state: {compile_id: {name: line}},
    broke: [compile_id]}]}.
    """

    def __init__(self, on_record: Callable[[], None] | None = None) -> None:
        self._on_record = on_record
        self._lock = threading.Lock()
        self._frames: dict[str, dict] = {}

    @contextlib.contextmanager
    def recording(self) -> Iterator[InputRecorder]:
        with torch_repro.compile_start_hook(self._record), torch_hooks.graph_break_hook(self._broke):
            yield self

    def to_dict(self) -> dict:
        with self._lock:
            return {"frames": [{**frame, "compiles": dict(frame["compiles"]),
                                "global_state": dict(frame["global_state"]),
                                "broke": list(frame["broke"])}
                               for frame in self._frames.values()]}

    def _broke(self, *_: object) -> None:
        # A function may break only in some of its compiles (under no_grad, say): its repro
        # replays one of those.
        frame, compile_id = torch_repro.compiling_frame(), torch_dynamo.current_compile_id()
        if frame is None or compile_id is None:
            return
        with self._lock:
            known = self._frames.get(_key(frame))
            if known is not None and compile_id in known["compiles"] and compile_id not in known["broke"]:
                known["broke"].append(compile_id)

    def _record(self, frame: torch_repro.CompilingFrame, compile_id: str | None) -> None:
        # A resume function's locals are the rest of a function's state, not arguments anyone
        # passed: the function's own compile has those.
        if torch_repro.is_resume_code(frame.code) or compile_id is None:
            return
        key = _key(frame)
        with self._lock:
            known = self._frames.get(key)
            if known is not None and (compile_id in known["compiles"]
                                      or len(known["compiles"]) >= MAX_COMPILES):
                return  # a restart after a graph break, or enough of them
        try:
            arguments = _arguments(frame)
            record = known or _frame_record(frame, arguments)
        except Exception:  # inside dynamo's compile: a value that cannot be read is not recorded
            return
        with self._lock:
            record["compiles"][compile_id] = arguments
            record["global_state"][compile_id] = global_state()
            self._frames.setdefault(key, record)
        if self._on_record is not None:
            self._on_record()


# The parts of the global state dynamo guards on (its grad-mode and GLOBAL_STATE guards) that a
# script sets back with public torch calls. Each is recorded as the line that sets it.
_AUTOCAST_DEVICES = ("cpu", "cuda")


def global_state() -> dict[str, str]:
    """{name: the line that sets it as it is now} for the global state dynamo guards on."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = ", warn_only=True" if torch.is_deterministic_algorithms_warn_only_enabled() else ""
    state = {"grad_mode": f"torch.set_grad_enabled({torch.is_grad_enabled()})",
             "default_dtype": f"torch.set_default_dtype({torch.get_default_dtype()})",
             "deterministic_algorithms": f"torch.use_deterministic_algorithms({deterministic}{warn_only})"}
    for device in _AUTOCAST_DEVICES:
        state[f"autocast({device})_enabled"] = (
            f"torch.set_autocast_enabled({device!r}, {torch.is_autocast_enabled(device)})")
        state[f"autocast({device})_dtype"] = (
            f"torch.set_autocast_dtype({device!r}, {torch.get_autocast_dtype(device)})")
    state["autocast_cache_enabled"] = (
        f"torch.set_autocast_cache_enabled({torch.is_autocast_cache_enabled()})")
    state["num_threads"] = f"torch.set_num_threads({torch.get_num_threads()})"
    return state


@contextlib.contextmanager
def global_state_kept() -> Iterator[None]:
    """Puts back the global state global_state() records, whatever the body set: a repro script
    run in a process that runs others sets what its compiles had."""
    state = global_state()
    try:
        yield
    finally:
        for line in state.values():
            exec(line, {"torch": torch})


# global_state() in a fresh interpreter, where torch has one: a script sets a part only where a
# compile had it otherwise. The thread count depends on the machine: a script sets it only where
# the compiles it replays had different ones.
DEFAULT_STATE = {
    "grad_mode": "torch.set_grad_enabled(True)",
    "default_dtype": "torch.set_default_dtype(torch.float32)",
    "deterministic_algorithms": "torch.use_deterministic_algorithms(False)",
    "autocast(cpu)_enabled": "torch.set_autocast_enabled('cpu', False)",
    "autocast(cpu)_dtype": "torch.set_autocast_dtype('cpu', torch.bfloat16)",
    "autocast(cuda)_enabled": "torch.set_autocast_enabled('cuda', False)",
    "autocast(cuda)_dtype": "torch.set_autocast_dtype('cuda', torch.float16)",
    "autocast_cache_enabled": "torch.set_autocast_cache_enabled(True)",
}


def _key(frame: torch_repro.CompilingFrame) -> str:
    return f"{frame.code.co_filename}:{frame.code.co_firstlineno}:{frame.code.co_name}"


def _frame_record(frame: torch_repro.CompilingFrame, arguments: list[dict]) -> dict:
    code = frame.code
    return {"filename": os.path.abspath(code.co_filename), "function": code.co_name,
            "firstlineno": code.co_firstlineno, "arguments": arguments,
            "closure": list(code.co_freevars), "argv": list(sys.argv),
            "compile": {"backend": frame.backend, "fullgraph": frame.fullgraph,
                        "dynamic": frame.dynamic, "mode": frame.mode,
                        "options": None if frame.options is None else describe(frame.options),
                        "cudagraphs": frame.cudagraphs},
            "compiles": {}, "global_state": {}, "broke": []}


def _arguments(frame: torch_repro.CompilingFrame) -> list[dict]:
    return [{"name": name, "kind": kind, "value": describe(frame.f_locals.get(name))}
            for name, kind in _parameters(frame.code)]


def _parameters(code: Any) -> list[tuple[str, str]]:
    """(name, "positional" | "varargs" | "keyword" | "varkw") of each parameter, in order."""
    names = code.co_varnames
    count = code.co_argcount
    kinds = [(name, "positional") for name in names[:count]]
    keyword = names[count:count + code.co_kwonlyargcount]
    rest = count + code.co_kwonlyargcount
    if code.co_flags & inspect.CO_VARARGS:
        kinds.append((names[rest], "varargs"))
        rest += 1
    kinds += [(name, "keyword") for name in keyword]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kinds.append((names[rest], "varkw"))
    return kinds


def describe(value: Any, depth: int = 0) -> dict:
    """What a script needs to rebuild `value`: {"kind": "tensor" | "value" | "list" | "tuple" |
    "dict" | "module" | "opaque", ...}; "opaque" (with "type") where it cannot."""
    if isinstance(value, torch.Tensor):
        return _describe_tensor(value)
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        if isinstance(value, (float, complex)) and not _finite(value):
            return {"kind": "value", "expression": f"float({str(value)!r})"}
        return {"kind": "value", "expression": repr(value)}
    if isinstance(value, (torch.dtype, torch.device)):
        return {"kind": "value", "expression": f"torch.{value}" if isinstance(value, torch.dtype)
                else f"torch.device({str(value)!r})"}
    if depth < _DEPTH and type(value) in (list, tuple):
        return {"kind": type(value).__name__, "items": [describe(item, depth + 1) for item in value]}
    if depth < _DEPTH and type(value) is dict and all(isinstance(key, str) for key in value):
        return {"kind": "dict", "items": {key: describe(item, depth + 1) for key, item in value.items()}}
    if isinstance(value, torch.nn.Module):
        return _describe_module(value)
    return {"kind": "opaque", "type": _type_name(value)}


def _describe_tensor(tensor: torch.Tensor) -> dict:
    spec = {"kind": "tensor", "shape": list(tensor.shape), "stride": list(tensor.stride()),
            "dtype": str(tensor.dtype).removeprefix("torch."), "device": str(tensor.device),
            "requires_grad": tensor.requires_grad, "values": None}
    exact = not (tensor.dtype.is_floating_point or tensor.dtype.is_complex)
    if exact and tensor.numel() <= EXACT_VALUES and tensor.is_contiguous() and not tensor.is_meta:
        spec["values"] = tensor.detach().cpu().flatten().tolist()
    return spec


def _describe_module(module: torch.nn.Module) -> dict:
    count = sum(parameter.numel() for parameter in module.parameters())
    spec = {"kind": "module", "type": _type_name(module), "parameters": count, "expression": None}
    if count <= MODULE_PARAMETERS and type(module).__module__.startswith("torch.nn.modules"):
        expression = f"torch.nn.{module!r}"
        try:  # a leaf module's repr is its constructor call; a container's is not
            rebuilt = eval(expression, {"torch": torch})
        except Exception:
            return spec
        if type(rebuilt) is type(module) and _shapes(rebuilt) == _shapes(module):
            spec["expression"] = expression
    return spec


def _shapes(module: torch.nn.Module) -> list[tuple]:
    return [(name, tuple(value.shape)) for name, value in module.state_dict().items()]


def _finite(value: float | complex) -> bool:
    return all(part not in (float("inf"), float("-inf")) and part == part
               for part in (value.real, value.imag))


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def read_recorded(path: str) -> dict:
    """What an InputRecorder saved at `path` (nothing, if the program broke nowhere)."""
    text = read_written(path)
    return json.loads(text) if text else {"frames": []}
