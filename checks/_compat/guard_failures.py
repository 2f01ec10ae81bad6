"""Why a function compiled again, as dynamo words it: guard-failure reasons, the `recompiles` log
artifact, and the recompile-limit warning.

Reads `0/0: tensor 'x' size mismatch at index 0. expected 2, actual 3` and `0/1: 2 <= x.size()[0]
<= 11  # return x  # m.py:4 in f` (torch._dynamo.guards' reasons, in compilation metrics'
recompile_reason and the `recompiles` / `recompiles_verbose` artifacts), and convert_frame's
warning "torch._dynamo hit config.recompile_limit (8)\\n   function: 'f' (/p/m.py:3)". Every
guard failure as torch 2.11, 2.13, 2.14 and 2.15 word it is recorded in tests/data/guard_failures/
and parsed by tests/checks/test_guard_failures.py, the warning in tests/checks/test_torch_text.py;
a release that rewords one changes this file and a recording, nothing else.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import TORCH_DIR
from .guards import SIZE_EXPR, normalised, readable

__all__ = [
    "RECOMPILES_LOGGERS",
    "CONVERT_FRAME_LOGGER",
    "LimitWarning",
    "limit_warning",
    "is_recompile_limit_failure",
    "recompiling_locals",
    "split_reason",
    "classify_failure",
    "stack_frames",
    "commented_frame",
    "unshortened",
    "note_of",
    "log_reasons",
    "size_value",
]

# The artifact loggers the recompile reasons go to; `recompiles_verbose` replaces `recompiles`
# when both are on.
RECOMPILES_LOGGERS = ("torch._dynamo.guards.__recompiles", "torch._dynamo.guards.__recompiles_verbose")
# convert_frame logs the recompile-limit warning here.
CONVERT_FRAME_LOGGER = "torch._dynamo.convert_frame"
# The function in torch._dynamo.guards that logs the reasons, its `frame` the call that failed.
_LOG_REASONS_FUNCTION = "get_and_maybe_log_recompilation_reasons"
# The gb_type of the Unsupported that convert_frame raises when a code object reaches the limit.
_RECOMPILE_LIMIT_GB_TYPE = "Dynamo recompile limit exceeded"


# -- the recompile limit -------------------------------------------------------------------------

_LIMIT_WARNING = re.compile(r"hit config\.(?P<limit>\w+) \((?P<value>\d+)\)\s*\n\s*function: "
                            r"'(?P<function>.*?)' \((?P<file>.*):(?P<line>\d+)\)")


@dataclass(frozen=True)
class LimitWarning:
    """convert_frame's warning that a function hit a recompile limit and now runs eagerly."""

    limit: str  # the config entry: recompile_limit, accumulated_recompile_limit, ...
    value: str
    function: str
    file: str
    line: int


def limit_warning(message: str) -> LimitWarning | None:
    """The recompile-limit warning in one convert_frame log message, or None for another message."""
    match = _LIMIT_WARNING.search(message)
    if match is None:
        return None
    return LimitWarning(match["limit"], match["value"], match["function"], match["file"],
                        int(match["line"]))


def is_recompile_limit_failure(fail_type: str | None, fail_reason: str | None) -> bool:
    """Whether a compile attempt's metrics say it was refused for hitting the recompile limit.

    Without fullgraph, dynamo raises Unsupported with this gb_type and runs the frame eagerly from
    then on; with fullgraph=True (or fail_on_recompile_limit_hit) it raises FailOnRecompileLimitHit.
    """
    return (fail_type == "FailOnRecompileLimitHit"
            or bool(fail_reason) and fail_reason.startswith(_RECOMPILE_LIMIT_GB_TYPE))


def recompiling_locals() -> dict[str, Any] | None:
    """The local variables of the call dynamo is logging recompile reasons for, or None.

    Read from the stack while the `recompiles` artifact is emitted: torch's reasons name a size
    guard's bounds but not the size the call had, and the call's frame holds it.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == _LOG_REASONS_FUNCTION:
            return getattr(frame.f_locals.get("frame"), "f_locals", None)
        frame = frame.f_back
    return None


# -- guard-failure reasons -----------------------------------------------------------------------

# "<entry>: <reason>", the entry a compile id such as 0/1 (or !0/0/1 under compiled autograd).
_REASON_HEAD = re.compile(r"(?P<entry>!?\d+(?:/\d+)+(?:_\d+)?): (?P<body>.*)", re.S)
# dynamo pads the guard code to 60 columns and appends "  # <user line>  # <file:line> in <fn>".
_COMMENT = re.compile(r"\s{2,}#\s")
_STACK_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')
_COMMENTED_FRAME = re.compile(r"#\s(?P<file>[^#\s]+):(?P<line>\d+) in (?P<function>[\w<>]+)")
_HINT = re.compile(r"\(HINT: (?P<hint>.*)\)\s*$")
_RELATION = re.compile(r"(?P<lhs>.+?) (?P<op><=|>=|==|!=|<|>) (?P<rhs>.+)")
_RANGE = re.compile(rf"(?P<low>-?\d+) (?P<low_op><=|<) (?P<subject>{SIZE_EXPR}) "
                    rf"(?P<high_op><=|<) (?P<high>-?\d+)")
_FLIP = {"<=": ">=", ">=": "<=", "<": ">", ">": "<", "==": "==", "!=": "!="}

_TENSOR_CHECKS: list[tuple[str, re.Pattern]] = [
    ("size", re.compile(r"size mismatch at index (?P<index>\d+)\. expected (?P<expected>\S+), "
                        r"actual (?P<actual>\S+)")),
    ("stride", re.compile(r"stride mismatch at index (?P<index>\d+)\. expected (?P<expected>\S+), "
                          r"actual (?P<actual>\S+)")),
    ("dtype", re.compile(r"dtype mismatch\. expected (?P<expected>\S+), actual (?P<actual>\S+)")),
    ("requires_grad", re.compile(r"requires_grad mismatch\. "
                                 r"expected requires_grad=(?P<expected>\d)")),
    ("ndim", re.compile(r"rank mismatch\. expected (?P<expected>\d+), actual (?P<actual>\d+)")),
    ("device", re.compile(r"dispatch key set mismatch\. "
                          r"expected DispatchKeySet\((?P<expected>[^,)]*)"
                          r".*actual DispatchKeySet\((?P<actual>[^,)]*)")),
]
_TENSOR_SUFFIX = {"size": ".size()[{index}]", "stride": ".stride()[{index}]", "dtype": ".dtype",
                  "requires_grad": ".requires_grad", "ndim": ".dim()", "device": ".device"}

_OBJECT_CHECKS: list[tuple[str, re.Pattern]] = [
    ("global_state", re.compile(r"GLOBAL_STATE changed: (?P<source>.*)")),
    ("global_state", re.compile(r"___check_(?P<source>torch_function_mode_stack)\(\)")),
    ("id", re.compile(r"___check_obj_id\((?P<source>.+), (?P<expected>\d+)\)")),
    ("type", re.compile(r"___check_type_id\((?P<source>.+), \d+\)(?:, type=(?P<expected>.*))?")),
    ("length", re.compile(r"len\((?P<source>.+)\) == (?P<expected>\d+)")),
    ("value", re.compile(r"(?P<source>.+?) is (?P<expected>(?:not )?None)$")),
    ("dict_keys", re.compile(r"list\(dict\.keys\((?P<source>.+)\)\)\[(?P<index>\d+)\] == "
                             r"(?P<expected>.+)")),
    ("dict_keys", re.compile(r"(?P<negated>not )?___dict_contains\((?P<key>.+?), "
                             r"(?P<source>.+)\)")),
    ("backend", re.compile(r"BACKEND_MATCH failure(?P<source>)(?:.*?Cached backend: "
                           r"(?P<expected>.+?)\. New backend: (?P<actual>.+?)\.(?: |$))?")),
    ("aliasing", re.compile(r"Duplicate tensors? found:? (?P<source>.*)")),
]


def split_reason(reason: str) -> tuple[str, str, str, str]:
    """(entry, guard code or torch's account of the check, dynamo's comment, the lines after).

    `0/1: n == 1   # return x * n  # m.py:4 in f\\nUser stack trace: ...`
    -> ("0/1", "n == 1", "return x * n  # m.py:4 in f", "User stack trace: ...").
    """
    head = _REASON_HEAD.match(reason)
    entry, body = (head["entry"], head["body"]) if head else ("?", reason)
    first, _, rest = body.partition("\n")
    parts = _COMMENT.split(first, maxsplit=1)
    return entry, parts[0].strip(), parts[1] if len(parts) > 1 else "", rest


def classify_failure(expression: str) -> tuple[str, str, str | None, str | None]:
    """(kind, source, expected, actual) of one failed guard, its source normalised."""
    kind, source, expected, actual = _classify(normalised(expression))
    return kind, readable(source), expected, actual


def _classify(expression: str) -> tuple[str, str, str | None, str | None]:
    tensor = re.match(r"tensor '(?P<name>.+?)' (?P<what>.*)", expression)
    if tensor:
        return _classify_tensor(tensor["name"], tensor["what"])
    if "device index mismatch" in expression:
        return "device", "device index", None, None
    for kind, pattern in _OBJECT_CHECKS:
        match = pattern.match(expression)
        if match:
            return _classify_object(kind, match)
    two_sided = _RANGE.fullmatch(expression)
    if two_sided:
        return _classify_range(two_sided)
    relation = _RELATION.fullmatch(expression)
    if relation and re.search(SIZE_EXPR, expression):
        return _classify_shape(relation)
    if relation and relation["op"] == "==":
        return "value", relation["lhs"], relation["rhs"], None
    return "other", expression, None, None


def _classify_tensor(name: str, what: str) -> tuple[str, str, str | None, str | None]:
    for kind, pattern in _TENSOR_CHECKS:
        match = pattern.match(what)
        if not match:
            continue
        source = name + _TENSOR_SUFFIX[kind].format(index=match.groupdict().get("index"))
        expected, actual = match["expected"], match.groupdict().get("actual")
        if kind == "requires_grad":
            expected, actual = str(expected == "1"), str(expected != "1")
        if kind == "device" and expected == actual:
            kind = "dispatch_keys"
        return kind, source, expected, actual
    return "other", name, None, None


def _classify_object(kind: str, match: re.Match) -> tuple[str, str, str | None, str | None]:
    found = match.groupdict()
    source, expected, actual = found["source"].strip(), found.get("expected"), found.get("actual")
    if kind == "backend":
        source = "backend"
    if kind == "global_state" and "grad_mode" in source:
        kind = "grad_mode"
    if kind == "dict_keys" and "key" in found:
        # The cached graph was traced with the key present (or absent); this call differs.
        expected = f"{'no ' if found['negated'] else ''}key {found['key']}"
    elif kind == "dict_keys":
        source = f"{source}.keys()[{found['index']}]"
    if kind == "aliasing":
        # The cached graph was traced with these arguments distinct; this call passed one tensor.
        source = ", ".join(json.loads(source)) if source.startswith("[") else source
        expected, actual = "distinct tensors", "the same tensor"
    return kind, source, expected, actual


def _classify_range(match: re.Match) -> tuple[str, str, str | None, str | None]:
    # "2 <= x.size()[0] <= 11" reads as: x.size()[0] expected >= 2 and <= 11.
    subject = match["subject"]
    kind = "stride" if ".stride()" in subject else "size"
    expected = f"{_FLIP[match['low_op']]} {match['low']} and {match['high_op']} {match['high']}"
    return kind, subject, expected, None


def _classify_shape(relation: re.Match) -> tuple[str, str, str | None, str | None]:
    # "2 <= x.size()[0]" reads as: x.size()[0] expected >= 2. Put the size on the left.
    lhs, op, rhs = relation["lhs"], relation["op"], relation["rhs"]
    if not re.fullmatch(SIZE_EXPR, lhs) and re.fullmatch(SIZE_EXPR, rhs):
        lhs, op, rhs = rhs, _FLIP[op], lhs
    kind = "stride" if ".stride()" in lhs else "size"
    return kind, lhs, rhs if op == "==" else f"{op} {rhs}", None


# -- where the guard came from -------------------------------------------------------------------

def stack_frames(stack_text: str) -> list[tuple[str, int, str]]:
    """(file, line, function) of each frame in a "User stack trace:" block, outermost first."""
    return [(match["file"], int(match["line"]), match["function"])
            for match in _STACK_FRAME.finditer(stack_text)]


def commented_frame(comment: str) -> tuple[str, int, str] | None:
    """(shortened file, line, function) in dynamo's comment ("return x  # m.py:40 in fn")."""
    match = _COMMENTED_FRAME.search(comment)
    return (match["file"], int(match["line"]), match["function"]) if match else None


def unshortened(short: str) -> str | None:
    """The file torch's shorten_filename wrote as `short`.

    It writes the path relative to the longest directory the file shares with torch's install, so
    look for it under each of that directory's ancestors.
    """
    torch_parent = Path(TORCH_DIR).parent
    for directory in (torch_parent, *torch_parent.parents):
        if (directory / short).is_file():
            return str(directory / short)
    # Sharing only the root, it cuts one character too many: /work/m.py is written "ork/m.py".
    # Any one character may stand before it; take the file if just one fits.
    found = glob.glob(os.sep + "?" + glob.escape(short))
    return found[0] if len(found) == 1 else None


def note_of(comment: str) -> str:
    """torch's hint in a guard's comment, or what a 0/1 specialisation means; may be empty."""
    if "0/1 specialization" in comment:
        return ("sizes 0 and 1 are always specialised: a dynamic dimension that sees 0 or 1 "
                "compiles a graph of its own")
    hint = _HINT.search(comment)
    return hint["hint"] if hint else ""


def log_reasons(message: str) -> list[str]:
    """The reasons, one per cache entry, in one `recompiles` (or `recompiles_verbose`) message."""
    _, _, listed = message.partition("triggered by the following guard failure(s):\n")
    reasons: list[str] = []
    for line in listed.splitlines():
        line = line[4:] if line.startswith("    ") else line
        if not line.startswith("- "):  # the verbose form's "guard 0 failures:" headings
            continue
        item = line[2:]
        if _REASON_HEAD.match(item):
            reasons.append(item)
        elif reasons:
            reasons[-1] += "\n" + item.strip()
    return reasons


# -- the value a size guard saw ------------------------------------------------------------------

def size_value(source: str, scope: dict[str, Any]) -> int | None:
    """The size or stride `source` ("x.size()[0]", "kwargs['ids'].size()[1]") names, read from a
    call's local variables; None if it names anything else or cannot be read.

    Only names, attributes, constant subscripts and a final .size()/.stride() are followed: the
    text is torch's, but it is read, never evaluated.
    """
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(tree, ast.Subscript) and isinstance(tree.value, ast.Call)
            and isinstance(tree.value.func, ast.Attribute)
            and tree.value.func.attr in ("size", "stride") and not tree.value.args
            and isinstance(tree.slice, ast.Constant)):
        return None
    try:
        tensor = _followed(tree.value.func.value, scope)
        value = getattr(tensor, tree.value.func.attr)()[tree.slice.value]
    except (LookupError, AttributeError, TypeError, _Unfollowable):
        return None
    return value if isinstance(value, int) else None


class _Unfollowable(Exception):
    pass


def _followed(node: ast.expr, scope: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return scope if node.id == "L" else scope[node.id]
    if isinstance(node, ast.Attribute):
        return getattr(_followed(node.value, scope), node.attr)
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return _followed(node.value, scope)[node.slice.value]
    raise _Unfollowable(ast.dump(node))
