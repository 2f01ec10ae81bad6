"""The standalone repros in a report: the Markdown's section, the verified ones inlined, shortest
first, the others listed with why; and its wording, which the HTML page shares.

An issue body has room for a few scripts, and a maintainer wants the short ones: verified repros
are inlined shortest first while they fit under INLINE_CHARS; the rest are named by file, and
those that did not reproduce on their own say why, so the reproduction command above them stays
the way to see the break. A page has room for all of them: the HTML shows every verified script.
"""

from __future__ import annotations

from collections.abc import Callable

from .repro import REPRODUCES

__all__ = ["INLINE_CHARS", "repros_markdown", "intro", "verified_shortest_first", "label",
           "reduced"]

INLINE_CHARS = 8000


def repros_markdown(repros: list[dict], fence: Callable[[str, str], str]) -> list[str]:
    """Markdown lines for `repros` (repro.make_repros' entries); `fence(text, language)` makes a
    code block."""
    out = ["### Standalone repros", ""]
    if not repros:
        return out + [f"{intro(repros)}", ""]
    inlined, room = [], INLINE_CHARS
    for repro in verified_shortest_first(repros):
        if len(repro["script"]) <= room:
            inlined.append(repro)
            room -= len(repro["script"])
    out += [intro(repros), ""]
    for repro in inlined:
        out += [f"#### {label(repro)}: `{repro['file']}`", "", f"{reduced(repro)}", "",
                fence(repro["script"].rstrip("\n"), "python"), ""]
    rest = [repro for repro in repros if repro not in inlined]
    if rest:
        out += ["Not inlined:", ""]
        out += [f"- {_listed(repro)}" for repro in rest]
        out.append("")
    return out


def intro(repros: list[dict]) -> str:
    """The line above the repros: how many reproduce."""
    if not repros:
        return "No graph break to write a repro for."
    verified = verified_shortest_first(repros)
    return (f"One script per graph break and per recompile cause. Each needs only torch and was "
            f"run in a fresh interpreter: {len(verified)} of {len(repros)} reproduce.")


def verified_shortest_first(repros: list[dict]) -> list[dict]:
    return sorted((repro for repro in repros if repro["status"] == REPRODUCES),
                  key=lambda repro: (len(repro["script"]), repro["break"] or 0))


def _count(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def label(repro: dict) -> str:
    if repro["kind"] == "recompile":
        return f"Recompile {repro['compile']} ({repro['guard']})"
    return f"Break {repro['break']} ({repro['gb_type']})"


def reduced(repro: dict) -> str:
    statements, arguments = repro["statements"], repro["arguments"]
    if statements is None:
        return "Reproduces (not reduced)."
    lost = repro["tries_lost"]
    hung = f", {lost} of which hung or crashed the worker" if lost else ""
    return (f"Reproduces. Reduced from {_count(statements['before'], 'statement', 'statements')} "
            f"to {statements['after']} and from {_count(arguments['before'], 'argument', 'arguments')} "
            f"to {arguments['after']}, in {_count(repro['tries'], 'try', 'tries')}{hung}; the "
            f"reduced script reproduces in a fresh interpreter.")


def _listed(repro: dict) -> str:
    name = f"`{repro['file']}`" if repro["file"] else "no script"
    head = f"{label(repro)}, {name}: {repro['status']}"
    if repro["status"] == REPRODUCES:
        return f"{head} (left out for length)"
    why = " ".join(repro["why"].split()) if repro["why"] else ""
    if len(why) > 300:
        why = "..." + why[-300:]
    return f"{head}: {why}"
