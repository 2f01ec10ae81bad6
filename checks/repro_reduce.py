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

import time
from collections.abc import Callable

from ._repro_worker import ReproWorker
from .repro import REPRODUCES, Pending, ReproPlan, verify_all

__all__ = ["MAX_TRIES", "REDUCE_S", "ddmin", "reduce_repro", "settle"]

MAX_TRIES = 64
REDUCE_S = 120.0


def settle(pending: list[Pending], *, worker: ReproWorker | None, timeout: float,
           seconds: float = REDUCE_S) -> list[dict]:
    """The entry of each pending script, in order: reduced in `worker` (unless None), then run in
    a fresh interpreter, several at once, for its status; a reduced script that does not
    reproduce there is put back whole and run again."""
    reduced = [reduce_repro(item, worker=worker, timeout=timeout, seconds=seconds)
               if worker is not None else (item.plan, item.entry) for item in pending]
    entries = _verified([(item, plan, entry) for item, (plan, entry) in zip(pending, reduced,
                                                                            strict=True)], timeout)
    # A reduced script that needed what an earlier try left in the worker: whole again.
    again = [index for index, (item, (plan, _)) in enumerate(zip(pending, reduced, strict=True))
             if entries[index]["status"] != REPRODUCES and plan is not item.plan]
    whole = _verified([(pending[index], pending[index].plan, _unreduced(entries[index]))
                       for index in again], timeout)
    for index, entry in zip(again, whole, strict=True):
        entries[index] = entry
    return entries


def reduce_repro(item: Pending, *, worker: ReproWorker, timeout: float,
                 max_tries: int = MAX_TRIES, seconds: float = REDUCE_S) -> tuple[ReproPlan, dict]:
    """The smallest plan ddmin finds whose script (at item.path) still reproduces in `worker`,
    starting from item.plan, and item.entry with how far it went: statements and arguments
    before and after, tries, and tries_lost (those that hung or ended the worker). item.plan
    itself if it does not reproduce in the worker."""
    plan, path, render = item.plan, item.path, item.render
    lost_before = worker.lost
    path.write_text(render(plan), encoding="utf-8")
    if worker.run(path, timeout=timeout, confirm=item.confirm)[0] != REPRODUCES:  # the fresh run will say why
        return plan, item.entry
    statements = [("statement", index) for index in plan.kept if index != plan.pinned]
    arguments = [("argument", name) for name in plan.arguments]
    tries = 0
    deadline = time.monotonic() + seconds

    def reproduces(parts: list[tuple[str, object]]) -> bool:
        nonlocal tries
        if tries >= max_tries or time.monotonic() > deadline:
            return False
        tries += 1
        path.write_text(render(_with(plan, parts)), encoding="utf-8")
        return worker.run(path, timeout=timeout, confirm=item.confirm)[0] == REPRODUCES

    parts = ddmin(statements + arguments, reproduces)
    reduced = plan if parts == statements + arguments else _with(plan, parts)
    kept = [index for index in reduced.kept if index != reduced.pinned]
    pinned = plan.pinned is not None and plan.pinned >= 0
    return reduced, {**item.entry, "tries": tries, "tries_lost": worker.lost - lost_before,
                     "statements": {"before": len(plan.root.body), "after": len(kept) + pinned},
                     "arguments": {"before": len(arguments), "after": len(reduced.arguments)}}


def _verified(scripts: list[tuple[Pending, ReproPlan, dict]], timeout: float) -> list[dict]:
    """Each entry with the status and why of its plan's script, written at its path and run in a
    fresh interpreter, and the script."""
    texts = [item.render(plan) for item, plan, _ in scripts]
    for (item, _, _), text in zip(scripts, texts, strict=True):
        item.path.write_text(text, encoding="utf-8")
    verdicts = verify_all([item.path for item, _, _ in scripts], timeout=timeout,
                          confirms=[item.confirm for item, _, _ in scripts])
    return [{**entry, "file": item.path.name, "status": status, "why": why, "script": text}
            for (item, _, entry), text, (status, why) in zip(scripts, texts, verdicts, strict=True)]


def _unreduced(entry: dict) -> dict:
    """`entry` of a reduction whose result was put back whole: nothing dropped."""
    return {**entry, "statements": {**entry["statements"], "after": entry["statements"]["before"]},
            "arguments": {**entry["arguments"], "after": entry["arguments"]["before"]}}


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
