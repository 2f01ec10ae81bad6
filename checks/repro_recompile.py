"""Standalone repros of recompiles: `fullgraph report --repro DIR`, after the graph breaks.

A recompile happens when a call fails a guard of each cached compile of a function. Its repro is
the function (as for a graph break: checks/repro.py), called first with the arguments of the
compile whose guard failed and then with those of the recompile, both as recorded when dynamo
compiled them, and a check that torch recompiles the function on the second call, naming what
the failed guard was on (`x` for a guard on `x.size()[0]`), heard through torch's `recompiles`
log. One script per distinct cause: the function and the guard that failed, without its values
(a size guard that fails at each new length is one cause). Delta debugging drops the statements
and arguments (from both calls) the recompile does not need, as for a graph break
(checks/repro_reduce.py).

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
from .report import failed_guard
from .repro import NOT_WRITTEN, REPRODUCES, Pending, ReproPlan, blockers, slug

__all__ = ["recompile_repros"]

_GUARDED = re.compile(r" on ([A-Za-z_]\w*)")  # fullgraph's "size guard on x.size()[0]: ..."


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
        entry = {"kind": "recompile", "break": None, "gb_type": None,
                 "compile": compile_["compile_id"], "guard": guard, "file": None,
                 "status": NOT_WRITTEN, "why": None, "statements": None, "arguments": None,
                 "tries": 0, "tries_lost": 0, "script": None}
        made = _plan(compile_, failed_entry, recorded["frames"])
        if isinstance(made, str):
            repros.append({**entry, "why": made})
            continue
        plan, before, after, grads = made
        path = Path(directory) / f"recompile_{number}_{slug(compile_['function'])}.py"
        render = functools.partial(_script, compile_=compile_, failed_entry=failed_entry,
                                   guard=guard, before=before, after=after, grads=grads)
        repros.append(Pending(entry, path, plan, render))
    return repros


def _plan(compile_: dict, failed_entry: str, frames: list[dict]
          ) -> tuple[ReproPlan, list[dict], list[dict], list[bool]] | str:
    """(the function's plan, the arguments of the compile whose guard failed, those of the
    recompile, the grad mode of each), or why there is no script."""
    function = compile_["function"]
    if torch_breaks.remove_resume_prefix(function) != function:
        return (f"a recompile of dynamo's resume function for the rest of "
                f"{torch_breaks.remove_resume_prefix(function)} after a graph break: its locals are "
                f"not arguments a script can pass")
    record = next((frame for frame in frames
                   if (frame["filename"], frame["function"], frame["firstlineno"])
                   == (os.path.abspath(compile_["filename"]), function, compile_["lineno"])), None)
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
    grads = [record["grad_enabled"][failed_entry], record["grad_enabled"][compile_["compile_id"]]]
    return plan, before, after, grads


def _script(plan: ReproPlan, *, compile_: dict, failed_entry: str, guard: str,
            before: list[dict], after: list[dict], grads: list[bool]) -> str:
    """The recompile's script for `plan`: its function called with `before`, then `after`, the
    arguments `plan` keeps of each."""
    function = compile_["function"]
    where = f"{compile_['filename']}:{compile_['lineno']}"
    docstring = textwrap.fill(
        f"Recompile {compile_['compile_id']} of {function} ({where}): {guard}. Standalone: "
        f"written by `fullgraph report --repro`. Needs only torch. Calls the compiled function "
        f"with the arguments of compile {failed_entry}, then with those of compile "
        f"{compile_['compile_id']}, and prints {REPRODUCES!r} when torch recompiles it on a "
        f"guard on the same name, and raises otherwise. Tensor arguments have the recorded "
        f"shapes, dtypes, devices and strides, with random values.", width=96)
    guarded = _GUARDED.search(guard)
    main = _MAIN.format(function=function, guarded=guarded[1] if guarded else None,
                        before=plan.inputs_text(before), after=plan.inputs_text(after),
                        compile=plan.compile_text(),
                        grad_before=plan.grad_text(grads[0], always=not all(grads)),
                        grad_after=plan.grad_text(grads[1], always=not all(grads)))
    return plan.whole(plan.head(docstring), main, torch_repro.REPRO_RECOMPILE_PROBE)


_MAIN = '''\
FUNCTION = {function!r}
GUARDED = {guarded!r}  # what the guard that failed was on


def main():
    torch.manual_seed(0)
    compiled = {compile}
    args, kwargs = {before}{grad_before}
    compiled(*args, **kwargs)
    args, kwargs = {after}{grad_after}
    with recompiles_heard() as heard:
        compiled(*args, **kwargs)
    words = [message.replace("'", " ").replace(".", " ").replace("[", " ").split()
             for message in heard if message.startswith(f"Recompiling function {{FUNCTION}} ")]
    if not any(GUARDED is None or GUARDED in found for found in words):
        raise AssertionError(f"expected {{FUNCTION}} to recompile on a guard on {{GUARDED}}; "
                             f"heard {{heard}}")
    print("{reproduces}")'''.replace("{reproduces}", REPRODUCES)
