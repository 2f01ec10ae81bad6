"""Read the guards behind each compiled graph, diff two compiles, and flag guards that never hold.

Every graph dynamo caches for a code object sits behind guards: checks on the call's tensors
(dtype, device, sizes, strides), on Python values it baked in, and on global state. When a
function compiled twice, the difference between the two graphs' guards is the reason:

    >>> diff_guards(0, 1, of=fn).summary()
    "x.size()[1]: 3 -> 4  (the guard that failed)"

Guards are compared by what they check: dynamo names some globals anew in each compile (the
builtins dict as `__builtins_dict___0`, then `__builtins_dict___2`), and a guard that only moved
to another name is no difference.

A guard on a value that changes on every call (a step counter kept on an nn.Module, a Python int
argument used as a loop bound) recompiles on every call until the recompile limit, then silently
runs eagerly; `find_unstable_guards` calls a function a few times and names such guards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ._compat import dynamo as torch_dynamo
from ._compat import guards as torch_guards
from ._message import CheckFailure, Frame, counted, format_failure
from .recompiles import (
    VALUE_KINDS,
    CompileReport,
    GuardFailure,
    compiled_run,
    parse_guard_failure,
)

__all__ = [
    "GuardSet",
    "GuardChange",
    "GuardDiff",
    "UnstableGuard",
    "UnstableGuardError",
    "guards_of",
    "diff_guards",
    "find_unstable_guards",
    "assert_no_unstable_guards",
]


class UnstableGuardError(CheckFailure):
    """A guard failed on call after call, or a function hit dynamo's recompile limit."""


@dataclass(frozen=True)
class GuardSet:
    """The guards of one cached graph: what a call must satisfy to run that graph."""

    compile_id: str
    guards: tuple[str, ...]  # guard code as dynamo prints it, L['x'] for argument x
    # torch's reason for compiling this graph: the guard of the graph used last that the call
    # failed. None for a first compile, or once torch no longer holds the compile's metrics.
    reason: str | None = None

    def __str__(self) -> str:
        return "\n".join([f"cache entry {self.compile_id}: {len(self.guards)} guards",
                          *(f"  {guard}" for guard in self.guards)])

    def to_dict(self) -> dict:
        return {"compile_id": self.compile_id, "guards": list(self.guards), "reason": self.reason}


def guards_of(obj: Any) -> list[GuardSet]:
    """The guards of every graph dynamo holds for `obj`, in the order they were compiled.

    obj: a function, a bound method or an nn.Module (whose forward is looked up), compiled or
    not; what counts is the code object, which is where dynamo keeps its cache.
    """
    code = _code_of(obj)
    reasons = _recompile_reasons(code)
    sets = []
    for entry in torch_dynamo.cache_entries(code):
        compile_id = torch_dynamo.entry_compile_id(entry)
        sets.append(GuardSet(compile_id, tuple(torch_guards.entry_guards(entry)),
                             reasons.get(compile_id)))
    return sorted(sets, key=lambda guard_set: torch_dynamo.compile_order(guard_set.compile_id))


def _recompile_reasons(code: Any) -> dict[str, str]:
    """compile id -> torch's recompile reason, for the compiles of `code` torch still holds.

    Compile ids start again after a reset, so the newest compile of this code under an id wins:
    the cache entries alive now are newer than any compile before the reset.
    """
    reasons = {}
    for metrics in torch_dynamo.compilation_metrics():
        if (metrics.co_name, metrics.co_filename, metrics.co_firstlineno) == (
                code.co_name, code.co_filename, code.co_firstlineno) and metrics.compile_id:
            reasons[metrics.compile_id] = metrics.recompile_reason
    return {compile_id: reason for compile_id, reason in reasons.items() if reason}


def _code_of(obj: Any) -> Any:
    target = torch_dynamo.compiled_target(obj)
    if isinstance(target, torch.nn.Module):
        target = target.forward
    target = getattr(target, "__func__", target)  # a bound method
    code = getattr(target, "__code__", None)
    if code is None:
        raise TypeError(f"obj must be a function, a method or an nn.Module, compiled or not; "
                        f"got {type(obj).__name__}")
    return code


# -- diffing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardChange:
    """One guarded fact that differs: `x.size()[1]` was 3, is 4. None: no such guard.

    failed: this is the guard torch says the call failed, the reason the second graph exists.
    """

    source: str
    before: str | None
    after: str | None
    failed: bool = False

    def __str__(self) -> str:
        mark = "  (the guard that failed)" if self.failed else ""
        return f"{self.source}: {_shown(self.before)} -> {_shown(self.after)}{mark}"


def _shown(value: str | None) -> str:
    return "(no guard)" if value is None else value


@dataclass(frozen=True)
class GuardDiff:
    """What the guards of two compiled graphs disagree on, most likely cause of the recompile
    first, and how many guards they share."""

    a: str  # compile ids
    b: str
    changes: tuple[GuardChange, ...]
    shared: int = 0  # guards both graphs have, alike once dynamo's per-compile names are set aside

    def summary(self, *, limit: int = 3) -> str:
        """The answer to "why did it compile twice", on one line."""
        if not self.changes:
            return f"{self.a} and {self.b} have the same guards"
        shown = "; ".join(str(change) for change in self.changes[:limit])
        more = len(self.changes) - limit
        return f"{shown}; and {more} more" if more > 0 else shown

    def __str__(self) -> str:
        heading = (f"guards of {self.a} -> {self.b}: {counted(len(self.changes), 'difference')}, "
                   f"{counted(self.shared, 'guard')} the same")
        return "\n".join([heading, *(f"  {change}" for change in self.changes)])

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "shared": self.shared,
                "changes": [{"source": c.source, "before": c.before, "after": c.after,
                             "failed": c.failed} for c in self.changes]}


def diff_guards(a: GuardSet | int, b: GuardSet | int, *, of: Any = None) -> GuardDiff:
    """What differs between two compiled graphs' guards.

    Either two GuardSets (from `guards_of`), or two indices into `guards_of(of)`, in compile
    order: `diff_guards(0, 1, of=fn)` compares fn's first and second graph.

    Guards are compared by what they check: a global dynamo names anew in each compile
    (`__builtins_dict___0`, then `__builtins_dict___2`) is one global. The differences come in
    the order they likely caused the recompile: the guard torch says the call failed, then
    tensor guards (sizes, strides, dtype, device, relations between sizes), then values, types,
    ids, lengths and global state, then the rest; within each, changed values before guards only
    one graph has.
    """
    if of is not None:
        sets = guards_of(of)
        a, b = (_pick(sets, index, name) for index, name in ((a, "a"), (b, "b")))
    for value, name in ((a, "a"), (b, "b")):
        if not isinstance(value, GuardSet):
            raise TypeError(f"{name} must be a GuardSet, or an int index with of=; "
                            f"got {type(value).__name__}")
    before, after = _facts(a.guards), _facts(b.guards)
    failure = _failure(a, b)
    changes, categories = [], {}
    for key in dict.fromkeys([*before, *after]):
        (old, old_category), (new, new_category) = before.get(key, _NONE), after.get(key, _NONE)
        if old != new:
            changes.append(GuardChange(key, old, new, failure is not None and _names(key, failure)))
            categories[key] = old_category or new_category
    # sort is stable: within a rank, the guards keep dynamo's order.
    changes.sort(key=lambda change: (not change.failed, _CATEGORY_RANK[categories[change.source]],
                                     change.before is None or change.after is None))
    shared = sum((Counter(map(torch_guards.normalised, a.guards))
                  & Counter(map(torch_guards.normalised, b.guards))).values())
    return GuardDiff(a.compile_id, b.compile_id, tuple(changes), shared)


_NONE = (None, None)  # no such guard: no value, no category
_CATEGORY_RANK = {torch_guards.TENSOR: 0, torch_guards.VALUE: 1, torch_guards.OTHER: 2}


def _failure(a: GuardSet, b: GuardSet) -> GuardFailure | None:
    """The guard of `a` that the call compiling `b` failed, where torch said so.

    torch records the failure of the graph used last when it compiles another: about `a` only
    when `a` was that graph.
    """
    failure = parse_guard_failure(b.reason) if b.reason else None
    return failure if failure is not None and failure.entry == a.compile_id else None


def _pick(sets: list[GuardSet], index: Any, name: str) -> GuardSet:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"{name} must be an int index when of= is given, got {index!r}")
    if not -len(sets) <= index < len(sets):
        raise ValueError(f"{name}={index}, but there are {len(sets)} cache entries")
    return sets[index]


def _facts(guards: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Each guard as {what it checks: (the value it wants, its category)}, so two graphs' guards
    line up."""
    facts: dict[str, tuple[str, str]] = {}
    for guard in guards:
        for key, value, category in torch_guards.guard_facts(guard):
            facts.setdefault(key, (value, category))
    return facts


# How the fact a failed guard checked is keyed, by the failure's kind; sizes and strides also by
# every relation that mentions them.
_FACT_OF_FAILURE = {"id": "id({})", "type": "type({})", "length": "len({})",
                    "grad_mode": "global {}", "global_state": "global {}", "device": "{}"}


def _names(key: str, failure: GuardFailure) -> bool:
    """Whether the fact `key` is what the failed guard checked: `x.size()[0]` is named by itself
    and by `2 <= x.size()[0]`, an id guard on `act` by `id(act)`, grad mode by
    `global grad_mode`."""
    source = failure.source
    if failure.kind == "device":  # dynamo guards the device through the dispatch keys
        return key in {source, source.removesuffix(".device") + ".dispatch_keys"}
    if failure.kind in {"size", "stride"}:
        return key == source or torch_guards.mentions_size(key, source)
    return key == _FACT_OF_FAILURE.get(failure.kind, "{}").format(source)


# -- unstable guards -----------------------------------------------------------------------------

@dataclass(frozen=True)
class UnstableGuard:
    """A guard on a Python value that failed in recompile after recompile."""

    function: Frame
    kind: str  # value, id, type or length
    source: str
    origin: str  # argument, module attribute or global
    values: tuple[str, ...]  # the values the failed graphs had baked in, oldest first
    recompiles: int  # recompiles it took part in
    calls: int
    where: Frame | None  # the user line that installed the guard, where torch says
    note: str

    def to_dict(self) -> dict:
        return {"function": self.function.to_dict(), "kind": self.kind, "source": self.source,
                "origin": self.origin, "values": list(self.values),
                "recompiles": self.recompiles, "calls": self.calls,
                "where": self.where.to_dict() if self.where else None, "note": self.note}


def unstable_guards(report: CompileReport, *, calls: int) -> list[UnstableGuard]:
    """Guards on Python values that failed in two recompiles or more, with different values.

    One recompile on a changed value is dynamo's normal course (an int argument becomes dynamic
    after it changes once); the same guard failing again with yet another value is a value that
    changes on every call.
    """
    seen: dict[tuple[Frame, str], list[tuple[str, GuardFailure]]] = defaultdict(list)
    for event in report.recompiles:
        for failure in event.failures:
            if failure.kind in VALUE_KINDS:
                seen[(event.function, failure.source)].append((event.compile_id, failure))
    found = []
    for (function, source), hits in seen.items():
        oldest_first = sorted(hits, key=lambda hit: torch_dynamo.compile_order(hit[1].entry))
        values = tuple(dict.fromkeys(failure.expected or "?" for _, failure in oldest_first))
        recompiles = len({compile_id for compile_id, _ in hits})
        if recompiles >= 2 and len(values) >= 2:
            first = hits[0][1]
            found.append(UnstableGuard(function, first.kind, source, first.origin, values,
                                       recompiles, calls, first.where, first.note))
    return found


def find_unstable_guards(fn: Callable, inputs: Iterable[Any], *, dynamic: bool | None = None,
                         backend: Any = "eager") -> list[UnstableGuard]:
    """Compile `fn` afresh, call it on every input, and name the guards that kept failing.

    Call it at least three times, with inputs as alike as real calls are: the same tensor three
    times shows a module attribute that changes on every call.
    """
    counter = _CallCounter()
    with compiled_run(fn, inputs, dynamic=dynamic, backend=backend,
                      before_call=counter) as (report, _):
        pass
    return unstable_guards(report, calls=counter.calls)


def assert_no_unstable_guards(fn: Callable, inputs: Iterable[Any], *,
                              dynamic: bool | None = None, backend: Any = "eager",
                              msg: str | None = None) -> CompileReport:
    """Fail if a guard of `fn` fails call after call, or if `fn` hits the recompile limit.

    Returns the CompileReport of the calls.
    """
    __tracebackhide__ = True
    counter = _CallCounter()
    with compiled_run(fn, inputs, dynamic=dynamic, backend=backend,
                      before_call=counter) as (report, _):
        pass
    found = unstable_guards(report, calls=counter.calls)
    if found or report.limit_hits:
        raise UnstableGuardError(_unstable_message(found, report, msg), report)
    return report


class _CallCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, args: tuple) -> None:
        self.calls += 1


def _unstable_message(found: list[UnstableGuard], report: CompileReport, msg: str | None) -> str:
    hits = report.limit_hits
    parts = []
    if found:
        calls = found[0].calls
        recompiles = counted(len(report.recompiles), "recompile")
        parts.append(f"{counted(len(found), 'guard')} failed call after call ({recompiles} in "
                     f"{counted(calls, 'call')}), more than the limit of 0")
    if hits:
        parts.append(f"{len(hits)} hit torch._dynamo.config.recompile_limit and fell back to eager")
    entries = [_unstable_entry(guard) for guard in found]
    entries += [[f"{event.function.location()}: recompile limit hit (compile {event.compile_id})",
                 event.error or ""] for event in hits]
    hint = ("Keep per-call Python state (step counters, positions, lengths used as loop bounds) "
            "out of the compiled code: pass it as a tensor, or as an int dynamo may treat as "
            "dynamic (an argument, not an nn.Module attribute).")
    return format_failure("; ".join(parts), entries, hint=hint, msg=msg)


def _unstable_entry(guard: UnstableGuard) -> list[str]:
    place = guard.where or guard.function
    values = ", ".join(guard.values)
    lines = [f"{place.location()}: {guard.kind} guard on {guard.source} ({guard.origin})",
             place.line,
             f"failed in {counted(guard.recompiles, 'recompile')} of {guard.function.function} "
             f"over {counted(guard.calls, 'call')}; the graphs had {values} baked in"]
    if guard.note:
        lines.append(f"torch: {guard.note}")
    return lines
