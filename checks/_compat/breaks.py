"""Graph breaks as torch words them: the message unimplemented() formats, the registry of break
types, the documentation links, dynamo's resume functions, and the error fullgraph=True raises.

Reads the layout of torch._dynamo.exc.unimplemented's message ("<gb_type>\\n  Explanation: ...\\n
  Hint: ...\\n\\n  Developer debug context: ..."), the same in 2.11 to 2.15, and
torch/_dynamo/graph_break_registry.json; tests/checks/test_graph_breaks.py parses the messages of
the torch it runs on.
"""

from __future__ import annotations

import functools
import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "DISABLED_GB_TYPES",
    "BreakMessage",
    "unsupported_error",
    "graph_break_details",
    "split_break_message",
    "graph_break_debug_context",
    "graph_break_id",
    "graph_break_registry_text",
    "graph_break_url",
    "remove_resume_prefix",
]

# The gb_types of calls the user opted out of with torch.compiler.disable (GB0098, GB0099).
DISABLED_GB_TYPES = frozenset({
    "Skip calling `torch.compiler.disable()`d function",
    "Skip inlining `torch.compiler.disable()`d function",
})

# torch chains a break raised while handling another (a break inside a loop) with this line.
_CHAINED_BREAK = "\n\n*** While handling this graph break, another graph break occurred: ***\n\n"
# unimplemented()'s layout:
#   "<gb_type>\n  Explanation: ...\n  Hint: ...\n  Hint: ...\n\n  Developer debug context: ..."
_BREAK_MESSAGE = re.compile(
    r"(?P<gb_type>[^\n]*)\n  Explanation: (?P<explanation>.*?)(?P<hints>(?:\n  Hint: .*?)*)"
    r"\n\n  Developer debug context:",
    re.S,
)
_DEBUG_CONTEXT = re.compile(r"\n  Developer debug context: (?P<context>[^\n]*)")


@dataclass(frozen=True)
class BreakMessage:
    """One graph-break message as torch's unimplemented() formats it, split into its parts."""

    gb_type: str
    explanation: str
    hints: tuple[str, ...]


def unsupported_error() -> type[BaseException]:
    """The exception a graph break raises under fullgraph=True (torch._dynamo.exc.Unsupported)."""
    return torch._dynamo.exc.Unsupported


def graph_break_details(exc: BaseException) -> tuple[str, str, list[traceback.FrameSummary]]:
    """(gb_type, torch's full message, traced user frames outermost first) of a break's exception."""
    gb_type = getattr(exc, "gb_type", None) or type(exc).__name__
    message = getattr(exc, "msg", None) or str(exc)
    return gb_type, message, list(getattr(exc, "real_stack", None) or [])


def split_break_message(message: str) -> list[BreakMessage | None]:
    """The chain of breaks in one message, the first cause first; None where the layout differs."""
    parts = []
    for part in message.split(_CHAINED_BREAK):
        match = _BREAK_MESSAGE.match(part)
        if match is None:
            parts.append(None)
            continue
        hints = [_dedent(hint) for hint in match["hints"].split("\n  Hint: ") if hint.strip()]
        parts.append(BreakMessage(match["gb_type"].strip(), _dedent(match["explanation"]), tuple(hints)))
    return parts


def _dedent(text: str) -> str:
    # unimplemented() indents continuation lines by four spaces.
    return re.sub(r"\n {4}", "\n", text).strip()


def graph_break_debug_context(message: str) -> str | None:
    """The first "Developer debug context" line of a break's message, or None.

    It names the concrete cause where the explanation is empty, as for an exception raised
    while running an op on fake tensors ("argument 'is_causal' must be bool, not SymBool").
    """
    match = _DEBUG_CONTEXT.search(message)
    if match is None:
        return None
    return match["context"].strip() or None


@functools.lru_cache(maxsize=1)
def _graph_break_registry() -> dict[str, tuple[str, dict]]:
    """gb_type -> (GB id, registry entry), from torch/_dynamo/graph_break_registry.json.

    A gb_type listed under several ids maps to the last, as torch's own documentation links do.
    """
    path = Path(torch._dynamo.__file__).resolve().parent / "graph_break_registry.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as registry:
        return {entry["Gb_type"]: (gb_id, entry)
                for gb_id, entries in json.load(registry).items() for entry in entries}


def graph_break_id(gb_type: str) -> str | None:
    """The registry's id for a gb_type ("GB0059"), or None where torch has none."""
    found = _graph_break_registry().get(gb_type)
    return found[0] if found else None


def graph_break_registry_text(gb_type: str) -> BreakMessage | None:
    """The registry's explanation and hints: templates with `{placeholders}`, for when a message
    does not parse."""
    found = _graph_break_registry().get(gb_type)
    if found is None:
        return None
    entry = found[1]
    return BreakMessage(gb_type, entry.get("Explanation", ""), tuple(entry.get("Hints", ())))


def graph_break_url(gb_type: str) -> str | None:
    """The documentation page torch links for a gb_type, or None."""
    link = getattr(torch._dynamo.exc, "get_gbid_documentation_link", None)
    return link(gb_type) if link is not None else None


def remove_resume_prefix(name: str) -> str:
    """`f` for dynamo's resume function `torch_dynamo_resume_in_f_at_12`; other names unchanged."""
    remove = getattr(torch._dynamo.exc, "remove_resume_prefix", None)
    # torch 2.11's returns None for a name without the prefix; 2.13's returns the name.
    return (remove(name) or name) if remove is not None else name
