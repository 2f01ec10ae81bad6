"""Delta debugging (Zeller's ddmin) over a repro's statements and arguments.

A repro is first written whole, from the function dynamo compiled: every top-level statement of
its body and every argument. Most of them have nothing to do with the break. ddmin drops parts
in halves, then quarters, ..., keeping a drop only when the script still reproduces in a fresh
interpreter, so what is left is a set none of whose chunks can go. Each try starts a Python
process that imports torch (about two seconds on a small machine): the number of tries and the
time are bounded, and the script is as far as it got when either runs out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .repro import REPRODUCES, ReproPlan, verify

__all__ = ["MAX_TRIES", "REDUCE_S", "ddmin", "reduce_repro"]

MAX_TRIES = 24
REDUCE_S = 120.0


def reduce_repro(plan: ReproPlan, path: str | os.PathLike, entry: dict, *, timeout: float,
                 max_tries: int = MAX_TRIES, seconds: float = REDUCE_S) -> tuple[ReproPlan, dict]:
    """The smallest plan ddmin finds that still reproduces, starting from `plan`, which does; and
    `entry` with how far it went: statements and arguments before and after, tries. Every plan
    ddmin keeps was run and reproduced, so the result needs no further run."""
    statements = [("statement", index) for index in plan.kept if index != plan.pinned]
    arguments = [("argument", name) for name in plan.arguments]
    tries = 0
    deadline = time.monotonic() + seconds

    def reproduces(parts: list[tuple[str, object]]) -> bool:
        nonlocal tries
        if tries >= max_tries or time.monotonic() > deadline:
            return False
        tries += 1
        candidate = _with(plan, parts)
        Path(path).write_text(candidate.script(), encoding="utf-8")
        return verify(path, timeout=timeout)[0] == REPRODUCES

    parts = ddmin(statements + arguments, reproduces)
    plan = _with(plan, parts)
    kept = [index for kind, index in parts if kind == "statement"]
    before = len(plan.root.body)
    return plan, {**entry, "tries": tries,
                  "statements": {"before": before, "after": len(kept) + (plan.pinned is not None
                                                                           and plan.pinned >= 0)},
                  "arguments": {"before": len(arguments), "after": len(plan.arguments)}}


def _with(plan: ReproPlan, parts: list[tuple[str, object]]) -> ReproPlan:
    kept = sorted([index for kind, index in parts if kind == "statement"]
                  + ([plan.pinned] if plan.pinned is not None and plan.pinned >= 0 else []))
    return plan.with_parts(kept, [name for kind, name in parts if kind == "argument"])


def ddmin(parts: list, passes: Callable[[list], bool]) -> list:
    """A sublist of `parts` (which `passes`) from which no chunk at the finest granularity tried
    can be removed with `passes` still true. Only complements are tried: a break needs the
    statements leading to it, rarely a lone chunk."""
    chunks = 2
    while parts:
        size = -(-len(parts) // chunks)  # ceiling division
        for start in range(0, len(parts), size):
            complement = parts[:start] + parts[start + size:]
            if passes(complement):
                parts = complement
                chunks = max(chunks - 1, 2)
                break
        else:
            if size == 1:
                return parts
            chunks = min(len(parts), chunks * 2)
    return parts
