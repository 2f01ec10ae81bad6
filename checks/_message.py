"""The one failure-message layout every checker uses, the frame type reports share, and the
words messages are made of: counted nouns and function names.

    <headline: what was counted, the count and the limit>
      1. path:line in function: <kind>
           <source line>
           <reason / detail lines>
      2. ...
    Hint: <what to do next>
"""

from __future__ import annotations

import functools
import linecache
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Frame", "CheckFailure", "check_msg", "counted", "display_path", "format_failure",
           "function_name"]


@dataclass(frozen=True)
class Frame:
    """One user frame: where a break or compile happened, outermost first in a stack."""

    filename: str
    lineno: int
    function: str
    line: str = ""

    @classmethod
    def at(cls, filename: str, lineno: int, function: str) -> Frame:
        return cls(filename, lineno, function, linecache.getline(filename, lineno).strip())

    def location(self) -> str:
        return f"{display_path(self.filename)}:{self.lineno} in {self.function}"

    def to_dict(self) -> dict:
        return {"filename": display_path(self.filename), "lineno": self.lineno,
                "function": self.function, "line": self.line}


class CheckFailure(AssertionError):
    """Base of every fullgraph assertion; `report` holds the data the message was made from."""

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


def display_path(path: str) -> str:
    """Paths under the current directory are shown relative; others as they are."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`1 recompile`, `2 recompiles`; `plural` for a noun that does not just add an s."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def function_name(fn: Callable) -> str:
    """How a report names `fn`: its qualified name, through functools.partial;
    `Module.forward` for a module."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, torch.nn.Module):
        return f"{type(fn).__qualname__}.forward"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def check_msg(checker: str, msg: object) -> None:
    """The `msg` every assert_* takes, put before its message: a str or None."""
    if msg is not None and not isinstance(msg, str):
        raise TypeError(f"{checker}: msg must be a str or None, got {type(msg).__name__}")


def format_failure(headline: str, entries: list[list[str]], hint: str | None = None,
                   msg: str | None = None) -> str:
    """Number the entries; the first line of each is its heading, the rest are indented under it.

    `msg`, like assert_close's, is put before the generated message.
    """
    lines = [headline]
    for number, entry in enumerate(entries, start=1):
        if not entry:
            continue
        lines.append(f"  {number}. {entry[0]}")
        lines.extend(f"       {detail}" for detail in entry[1:] if detail)
    if hint:
        lines.append(f"Hint: {hint}")
    text = "\n".join(lines)
    return f"{msg}\n\n{text}" if msg else text
