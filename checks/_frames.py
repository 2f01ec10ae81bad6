"""Which frames are the user's: the lines a report points at.

A frame is the user's unless it runs torch's code or this package's (the checkers calling the
user's function). Code made from a string (`<string>`, FX's `<eval_with_key>.N`) counts as the
user's where a whole stack is kept, but has no line to show: `with_source=True` leaves it out where
one line has to stand for the stack.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable

from . import _compat
from ._compat import guard_failures as torch_guard_failures
from ._message import Frame

__all__ = ["CHECKS_DIR", "is_user_file", "innermost_user_frame", "raised_at", "user_frame_in"]

CHECKS_DIR = os.path.dirname(os.path.abspath(__file__))


def is_user_file(filename: str, *, with_source: bool = False) -> bool:
    """Whether code in `filename` is the user's: not torch's, not this package's (torchvision's
    is the user's: only torch's own directory is left out)."""
    if with_source and filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    return not (_compat.is_torch_file(path) or path.startswith(CHECKS_DIR + os.sep))


def innermost_user_frame(frames: Iterable[tuple[str, int, str]], *, with_source: bool = False
                         ) -> Frame | None:
    """The last of `frames` ((file, line, function), outermost first) in a user file."""
    user = [frame for frame in frames if is_user_file(frame[0], with_source=with_source)]
    return Frame.at(*user[-1]) if user else None


def user_frame_in(stack_text: str) -> Frame | None:
    """The innermost user frame of a stack torch wrote out ("User stack trace:", "Found from")."""
    return innermost_user_frame(torch_guard_failures.stack_frames(stack_text))


def raised_at(error: BaseException, *, with_source: bool = False) -> Frame | None:
    """The innermost user frame of the traceback `error` carries."""
    return innermost_user_frame(((summary.filename, summary.lineno, summary.name)
                                 for summary in traceback.extract_tb(error.__traceback__)),
                                with_source=with_source)
