"""Standalone repros of recompiles: `fullgraph report --repro DIR`, after the graph breaks.

A recompile happens when a call fails a guard of each cached compile of a function. Its repro is
the function (as for a graph break: checks/repro.py), called first with the arguments of the
compile whose guard failed and then with those of the recompile, both as recorded when dynamo
compiled them, and a check that torch recompiles the function on the second call, naming what
the failed guard was on (`x` for a guard on `x.size()[0]`), heard through torch's `recompiles`
log. The script prints what torch said of the recompile, and fullgraph reads it as it reads the
program's recompiles: the script reproduces only if the guard that failed is the same, its kind
and source (`size` on `x.size()[0]`) those the program's had. One script per distinct cause: the
function and the guard that failed, without its values (a size guard that fails at each new
length is one cause). Delta debugging drops the statements and arguments (from both calls) the
recompile does not need, as for a graph break (checks/repro_reduce.py), and keeps the guard.

A resume function's recompile (dynamo's code for the rest of a function after a graph break)
gets no script: its locals are not arguments anyone passed, and the function's own recompile
usually shows the same cause.
"""

from __future__ import annotations

import functools
import os
import re
import textwrap
from pathlib import Path

from ._compat import breaks as torch_breaks
from ._compat import repro as torch_repro
from ._report_data import local_path
from .recompiles import failures_from_log, guard_subject
from .report import failed_guard
from .repro import NOT_WRITTEN, REPRODUCES, Pending, ReproPlan, blockers, compile_call, slug

__all__ = ["HEARD", "recompile_repros", "same_guard"]

_GUARDED = re.compile(r" on ([A-Za-z_]\w*)")  # fullgraph's "size guard on x.size()[0]: ..."
# The line a recompile's script prints before torch's messages about the recompile.
HEARD = "Torch's account of the recompile:"


def recompile_repros(data: dict, recorded: dict, directory: str | os.PathLike
                     ) -> list[dict | Pending]:
    """For each distinct recompile cause in the report `data`: its entry if no script can be
    written, else its script to settle (repro_reduce.settle)."""
    causes: dict[tuple, tuple[dict, str, str]] = {}
    for compile_ in data["compiles"]:
        if compile_["recompile"] and compile_["reasons"]:
            reason = compile_["reasons"][0]
            failed_entry, _, guard = reason.partition(": ")
            cause = (compile_["function"], compile_["filename"], failed_guard(reason))
            causes.setdefault(cause, (compile_, failed_entry, guard))
    repros = []
    for number, (compile_, failed_entry, guard) in enumerate(causes.values(), start=1):
        failed = compile_["failed_guards"][0]
        subject = guard_subject(failed["kind"], failed["source"])
        record = _recorded_frame(compile_, recorded["frames"])
        entry = {"kind": "recompile", "break": None, "gb_type": None,
                 "compile": compile_["compile_id"], "guard": guard,
                 "compile_call": compile_call(record), "file": None, "status": NOT_WRITTEN,
                 "why": None, "statements": None, "arguments": None, "tries": 0,
                 "tries_lost": 0, "script": None}
        made = _plan(compile_, failed_entry, record)
        if isinstance(made, str):
            repros.append({**entry, "why": made})
            continue
        plan, before, after, states = made
        path = Path(directory) / f"recompile_{number}_{slug(compile_['function'])}.py"
        render = functools.partial(_script, compile_=compile_, failed_entry=failed_entry,
                                   guard=guard, subject=subject, before=before, after=after,
                                   states=states)
        confirm = functools.partial(same_guard, function=compile_["function"],
                                    expected=(failed["kind"], failed["source"]), guard=subject)
        repros.append(Pending(entry, path, plan, render, confirm))
    return repros


def same_guard(printed: str, *, function: str, expected: tuple[str, str], guard: str) -> str | None:
    """Why what a recompile's script `printed` (after HEARD: torch's messages) is not a recompile
    of `function` on the guard whose (kind, source) is `expected`, `guard` as the report words
    it; None when it is. The guard that failed is that of the script's one cache entry."""
    heard = printed.rpartition(HEARD)[2]
    failures = failures_from_log(heard)
    if not failures:
        return f"the script heard no guard fail when {function} recompiled; expected: {guard}"
    observed = failures[0]
    if (observed.kind, observed.source) == expected:
        return None
    return (f"{function} recompiled on another guard: expected {guard} (as in the program), "
            f"observed {observed.subject()} ({observed.text.strip()})")


def _recorded_frame(compile_: dict, frames: list[dict]) -> dict | None:
    """The record of the function `compile_` compiled, if its arguments were recorded."""
    return next((frame for frame in frames
                 if (frame["filename"], frame["function"], frame["firstlineno"])
                 == (local_path(compile_["filename"]), compile_["function"],
                     compile_["lineno"])), None)


def _plan(compile_: dict, failed_entry: str, record: dict | None
          ) -> tuple[ReproPlan, list[dict], list[dict], list[dict]] | str:
    """(the function's plan, the arguments of the compile whose guard failed, those of the
    recompile, the global state of each), or why there is no script."""
    function = compile_["function"]
    if torch_breaks.remove_resume_prefix(function) != function:
        return (f"a recompile of dynamo's resume function for the rest of "
                f"{torch_breaks.remove_resume_prefix(function)} after a graph break: its locals are "
                f"not arguments a script can pass")
    compiles = record["compiles"] if record else {}
    if failed_entry not in compiles or compile_["compile_id"] not in compiles:
        return (f"the arguments of compiles {failed_entry} and {compile_['compile_id']} of "
                f"{function} were not both recorded")
    before, after = compiles[failed_entry], compiles[compile_["compile_id"]]
    found = blockers({**record, "arguments": before}) + blockers({**record, "arguments": after})
    if found:
        return "; ".join(dict.fromkeys(found))
    try:
        plan = ReproPlan.build(Path(record["filename"]).read_text(encoding="utf-8"), record, None)
    except (OSError, SyntaxError, LookupError) as error:
        return f"the source of {function} cannot be read: {error}"
    states = [record["global_state"][failed_entry], record["global_state"][compile_["compile_id"]]]
    return plan, before, after, states


def _script(plan: ReproPlan, *, compile_: dict, failed_entry: str, guard: str, subject: str,
            before: list[dict], after: list[dict], states: list[dict]) -> str:
    """The recompile's script for `plan`: its function called with `before`, then `after`, the
    arguments `plan` keeps of each."""
    function = compile_["function"]
    where = f"{compile_['filename']}:{compile_['lineno']}"
    docstring = textwrap.fill(
        f"Recompile {compile_['compile_id']} of {function} ({where}): {guard}. Standalone: "
        f"written by `fullgraph report --repro`. Needs only torch. Calls the compiled function "
        f"with the arguments of compile {failed_entry}, then with those of compile "
        f"{compile_['compile_id']}, and raises unless torch recompiles it on a guard on the "
        f"same name; then prints torch's account of the recompile and {REPRODUCES!r} (fullgraph "
        f"checks it names the same guard). Tensor arguments have the recorded shapes, dtypes, "
        f"devices and strides, with random values.", width=96)
    guarded = _GUARDED.search(guard)
    head = plan.head(docstring)
    main = _MAIN.format(argv=plan.argv_text(head), function=function, guard=subject,
                        guarded=guarded[1] if guarded else None, heard=HEARD,
                        before=plan.inputs_text(before), after=plan.inputs_text(after),
                        compile=plan.compile_text(),
                        state_before=plan.state_text(states, 0),
                        state_after=plan.state_text(states, 1))
    return plan.whole(head, main, torch_repro.REPRO_RECOMPILE_PROBE)


_MAIN = '''\
FUNCTION = {function!r}
GUARD = {guard!r}  # the guard that failed in the program, as fullgraph words it
GUARDED = {guarded!r}  # what it was on


def main():
    torch.manual_seed(0){argv}
    compiled = {compile}
    args, kwargs = {before}{state_before}
    compiled(*args, **kwargs)
    args, kwargs = {after}{state_after}
    with recompiles_heard() as heard:
        compiled(*args, **kwargs)
    ours = [message for message in heard if message.startswith(f"Recompiling function {{FUNCTION}} ")]
    words = [message.replace("'", " ").replace(".", " ").replace("[", " ").split() for message in ours]
    if not any(GUARDED is None or GUARDED in found for found in words):
        raise AssertionError(f"expected {{FUNCTION}} to recompile on a guard on {{GUARDED}}; "
                             f"heard {{heard}}")
    print({heard!r}, *ours, sep="\\n")
    print("{reproduces}")'''.replace("{reproduces}", REPRODUCES)
