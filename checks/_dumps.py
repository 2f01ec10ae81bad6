"""Reading the stacks faulthandler dumps: what fullgraph.model.launch collects (Ended.stack) from a
process that crashed or that it stopped, and the one place that knows their layout.

    Current thread 0x00007f3a... (most recent call first):
      File "train.py", line 12 in step
      File "train.py", line 30 in main

    Thread 0x00007f39... (most recent call first):
      File ".../threading.py", line 324 in wait

    Extension modules: numpy.core._multiarray_umath, ... (total: 12)

"Current thread" is the one the signal arrived on (the main thread, for a signal sent to the
process); without one, the oldest thread, which faulthandler lists last, is the main thread.
"""

from __future__ import annotations

import re

__all__ = ["threads", "main_thread_first", "frames"]

_THREAD_START = re.compile(r"^(?:Current thread|Thread) 0x", re.M)
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)', re.M)


def threads(dump: str) -> tuple[str, list[str], str]:
    """(what comes before the first thread, each thread's stack, the "Extension modules" tail)."""
    starts = [match.start() for match in _THREAD_START.finditer(dump)]
    if not starts:
        return dump, [], ""
    ends = [*starts[1:], len(dump)]
    stacks = [dump[start:end].strip("\n") for start, end in zip(starts, ends)]
    tail = ""
    if "\n\n" in stacks[-1]:  # "Extension modules: ..." follows the last thread
        stacks[-1], tail = stacks[-1].split("\n\n", 1)
    return dump[:starts[0]].strip("\n"), stacks, tail


def main_thread_first(dump: str) -> str:
    """The dump with the main thread's stack first: the current thread where there is one, else
    the oldest thread."""
    head, stacks, tail = threads(dump)
    if len(stacks) < 2:
        return dump
    main = next((stack for stack in stacks if stack.startswith("Current")), stacks[-1])
    ordered = [main, *(stack for stack in stacks if stack is not main)]
    return "\n\n".join(filter(None, [head, *ordered, tail]))


def frames(stack: str) -> list[tuple[str, int, str]]:
    """(file, line, function) of each frame of one thread's stack, outermost first (the dump
    lists the most recent call first)."""
    return [(match["file"], int(match["line"]), match["function"])
            for match in reversed(list(_FRAME.finditer(stack)))]
