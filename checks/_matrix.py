"""What the SDPA and grad-mode matrices share: their arguments, and the lines of their entries;
and the walk over the tensors in nested arguments, which the CUDA-graph checker uses too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ._compat import breaks as torch_breaks
from .graph_breaks import GraphBreak

__all__ = ["as_args", "break_lines", "describe", "hint_for", "named_tensors", "tensors_in"]


def as_args(made: Any) -> tuple:
    """What make_inputs returned, as positional arguments: a tuple is them, anything else the one."""
    return made if isinstance(made, tuple) else (made,)


def named_tensors(path: str, value: Any) -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) of every tensor in nested dicts, lists and tuples, a NamedTuple's by field."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from named_tensors(f"{path}[{key!r}]", item)
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        for index, item in enumerate(value):
            yield from named_tensors(f"{path}.{fields[index]}" if fields else f"{path}[{index}]", item)


def tensors_in(value: Any) -> list[Tensor]:
    """Every tensor in nested dicts, lists and tuples, in named_tensors' order."""
    return [tensor for _, tensor in named_tensors("", value)]


def describe(error: BaseException) -> str:
    """`TypeError: <the first line of its message>`."""
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0]}" if first else type(error).__name__


def break_lines(brk: GraphBreak) -> list[str]:
    """A break in an entry: where, the source line, the calls that led there, and why."""
    lines = [f"{brk.location.location()}: {brk.gb_type}", f"  {brk.location.line}"]
    lines += [f"  called from {frame.location()}" for frame in reversed(brk.frames[:-1])]
    why = (brk.explanation.splitlines()[0] if brk.explanation
           else torch_breaks.graph_break_debug_context(brk.reason))
    return lines + ([f"  {why}"] if why else [])


def hint_for(failed: tuple, hints: dict[str, str]) -> str:
    """The hints for the kinds of problem the failed entries have, in the order `hints` lists them."""
    kinds = {kind for entry in failed for kind in entry.problems}
    return " ".join(hint for kind, hint in hints.items() if kind in kinds)
