"""Delta debugging (Zeller's ddmin) over a repro's statements and arguments.

A repro is first written whole, from the function dynamo compiled: every top-level statement of
its body and every argument. Most of them have nothing to do with the break or the recompile.
ddmin drops parts in halves, then quarters, ..., keeping a drop only when the script still
reproduces, so what is left is a set none of whose chunks can go. Its tries run in one
long-lived worker (checks/_repro_worker.py: milliseconds a try, not the seconds a fresh
interpreter spends importing torch), bounded in number and time; the script is as far as it got
when either runs out. What the report says of the result comes from a fresh interpreter: the
reduced script is run in one, and if it does not reproduce there the whole script is kept and
run in one instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ._repro_worker import ReproWorker
from .repro import REPRODUCES, ReproPlan, verify

__all__ = ["MAX_TRIES", "REDUCE_S", "ddmin", "reduce_repro", "settle"]

MAX_TRIES = 64
REDUCE_S = 120.0


def settle(plan: ReproPlan, path: Path, entry: dict, *, render: Callable[[ReproPlan], str],
           worker: ReproWorker | None, timeout: float, seconds: float = REDUCE_S) -> dict:
    """`entry` for the script of `plan` (as `render` makes it), written at `path`: reduced in
    `worker` unless it is None, with its status from a fresh interpreter."""
    entry = {**entry, "file": path.name}
    if worker is None:
        return _verified(plan, path, entry, render, timeout)
    return reduce_repro(plan, path, entry, render=render, worker=worker, timeout=timeout,
                        seconds=seconds)


def reduce_repro(plan: ReproPlan, path: str | os.PathLike, entry: dict, *,
                 render: Callable[[ReproPlan], str], worker: ReproWorker, timeout: float,
                 max_tries: int = MAX_TRIES, seconds: float = REDUCE_S) -> dict:
    """Write the smallest plan ddmin finds that still reproduces, starting from `plan`, at `path`
    as `render` makes its script; return `entry` with its status and why from a fresh
    interpreter, its script, and how far reduction went: statements and arguments before and
    after, tries, and tries_lost (those that hung or ended the worker)."""
    lost_before = worker.lost
    Path(path).write_text(render(plan), encoding="utf-8")
    if worker.run(path, timeout=timeout)[0] != REPRODUCES:  # nothing to reduce: say why, afresh
        return _verified(plan, path, entry, render, timeout)
    statements = [("statement", index) for index in plan.kept if index != plan.pinned]
    arguments = [("argument", name) for name in plan.arguments]
    tries = 0
    deadline = time.monotonic() + seconds

    def reproduces(parts: list[tuple[str, object]]) -> bool:
        nonlocal tries
        if tries >= max_tries or time.monotonic() > deadline:
            return False
        tries += 1
        Path(path).write_text(render(_with(plan, parts)), encoding="utf-8")
        return worker.run(path, timeout=timeout)[0] == REPRODUCES

    reduced = _with(plan, ddmin(statements + arguments, reproduces))
    entry = _verified(reduced, path, entry, render, timeout)
    if entry["status"] != REPRODUCES:  # it needed what the worker kept from an earlier try
        reduced = plan
        entry = _verified(plan, path, entry, render, timeout)
    kept = [index for index in reduced.kept if index != reduced.pinned]
    return {**entry, "tries": tries, "tries_lost": worker.lost - lost_before,
                     "statements": {"before": len(plan.root.body),
                                    "after": len(kept) + (plan.pinned is not None
                                                          and plan.pinned >= 0)},
                     "arguments": {"before": len(arguments), "after": len(reduced.arguments)}}


def _verified(plan: ReproPlan, path: str | os.PathLike, entry: dict,
              render: Callable[[ReproPlan], str], timeout: float) -> dict:
    """`entry` with the status and why of `plan`'s script, written at `path` and run in a fresh
    interpreter, and the script."""
    script = render(plan)
    Path(path).write_text(script, encoding="utf-8")
    status, why = verify(path, timeout=timeout)
    return {**entry, "status": status, "why": why, "script": script}


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
