"""torch's guard text, read: the guard code of cache entries and the reasons a guard failed.

The companion of _compat for text rather than APIs: every regular expression over what dynamo
prints about guards lives here, so a torch release that rewords a guard changes this file and
tests/data/guard_failures/ (one recording per torch version), nothing else.

Two kinds of text:
  - guard code, as a cache entry's guard manager lists it: `check_tensor(L['x'], ...)`,
    `L['n'] == 1`, `___check_obj_id(G['__builtins_dict___0']['len'], 9001)`,
    `2 <= L['x'].size()[0]`;
  - guard-failure reasons, as the `recompiles` log artifact and compilation metrics word them:
    `0/0: tensor 'x' size mismatch at index 0. expected 2, actual 3`, `0/1: 2 <= x.size()[0] <= 11`.

Both name some globals by names dynamo makes up per compile (`__builtins_dict___0` in one compile,
`__builtins_dict___2` in the next, for the same builtins); `normalised` writes those the same way
every time, so one guard compared across compiles is one guard.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

__all__ = [
    "normalised",
    "readable",
    "guard_facts",
    "mentions_size",
    "TENSOR",
    "VALUE",
    "OTHER",
    "split_reason",
    "classify_failure",
    "stack_frames",
    "commented_frame",
    "note_of",
    "log_reasons",
    "size_value",
]


# -- names dynamo makes up per compile -----------------------------------------------------------

_ODICT_GETITEM = re.compile(r"___odict_getitem\((?P<mapping>(?:(?!___odict_getitem\().)+?), "
                            r"(?P<key>'[^']*'|\"[^\"]*\"|-?\d+)\)")
_SYNTHETIC_GLOBALS: list[tuple[re.Pattern, str]] = [
    # OutputGraph.install_global: unique_id(prefix), a process-wide counter after the prefix.
    (re.compile(r"G\[(['\"])(?P<name>__builtins_dict__|__warnings_warn_wrapper|__gen_rand_values)"
                r"_\d+\1\]"), r"G['\g<name>']"),
    # OutputGraph.install_global_by_id: prefix_<id(value)>_c<frame count>; the id is the object's.
    (re.compile(r"G\[(['\"])(?P<name>\w*_\d+)_c\d+\1\]"), r"G['\g<name>']"),
    # InstructionTranslator.import_source: a module reached from another module's code.
    (re.compile(r"G\[(['\"])__import_(?P<module>\w+)\1\]"),
     lambda match: match["module"].replace("_dot_", ".")),
]


def normalised(text: str) -> str:
    """Guard code or a guard's source with dynamo's per-compile names written one way.

    `G['__builtins_dict___2']['len']` -> `G['__builtins_dict__']['len']`; a module alias
    `G['__import_torch_dot_nn']` -> `torch.nn`; `___odict_getitem(S, 'k')` (how older torch
    wrote an OrderedDict lookup) -> `S['k']`.
    """
    for pattern, replacement in _SYNTHETIC_GLOBALS:
        text = pattern.sub(replacement, text)
    while True:  # innermost lookup first, so nested ones unwind
        unwound = _ODICT_GETITEM.sub(r"\g<mapping>[\g<key>]", text)
        if unwound == text:
            return text
        text = unwound


def readable(source: str) -> str:
    """L['x'].size()[1] -> x.size()[1], as torch's recompile messages write it."""
    return re.sub(r"L\[\s*['\"](.*?)['\"]\s*\]", r"\1", source)


# -- guard code ----------------------------------------------------------------------------------

# What a guard checks, by how likely a change in it made a function compile again: a tensor's
# sizes, strides, dtype or device (and relations between sizes); a Python value, type, identity,
# length or the global state; anything else (an attribute's absence, a dict's key).
TENSOR, VALUE, OTHER = "tensor", "value", "other"

_CHECK_TENSOR = re.compile(
    r"check_tensor\((?P<source>.+?), (?P<type>\w+), (?P<keys>DispatchKeySet\(.*?\)), "
    r"(?P<dtype>[\w.]+), device=(?P<device>[^,]+), requires_grad=(?P<requires_grad>\w+), "
    r"size=\[(?P<size>.*?)\], stride=\[(?P<stride>.*?)\]\)")
_GLOBAL_STATE = re.compile(r"___check_global_state\(\) against (?P<state>\{.*\})")
_OBJECT_ID = re.compile(r"___check_(?P<what>obj|type)_id\((?P<source>.+), (?P<id>\d+)\)"
                        r"(?:, type=(?P<type>.*))?")
_LENGTH = re.compile(r"len\((?P<source>.+)\) == (?P<value>\d+)")
_EQUALS = re.compile(r"(?P<source>.+?) == (?P<value>.+)")
_SIZE_TERM = re.compile(r"\.(?:size|stride)\(\)\[\d+\]")


def guard_facts(guard: str) -> list[tuple[str, str, str]]:
    """(what it checks, the value it wants, TENSOR/VALUE/OTHER) for each fact in one guard.

    Keys are readable and normalised, so two compiles' guards line up key by key.
    """
    guard = normalised(guard)
    tensor = _CHECK_TENSOR.fullmatch(guard)
    if tensor:
        source = readable(tensor["source"])
        facts = [(f"{source}.{field}", tensor[field], TENSOR)
                 for field in ("dtype", "device", "requires_grad")]
        facts.append((f"{source}.dispatch_keys", tensor["keys"], TENSOR))
        for field in ("size", "stride"):
            values = tensor[field].split(", ") if tensor[field] else []  # [] for a scalar
            facts += [(f"{source}.{field}()[{index}]", "dynamic" if value == "None" else value,
                       TENSOR) for index, value in enumerate(values)]
        return facts
    state = _GLOBAL_STATE.fullmatch(guard)
    if state:
        return [(f"global {name}", json.dumps(value), VALUE)
                for name, value in json.loads(state["state"]).items()]
    obj = _OBJECT_ID.fullmatch(guard)
    if obj:
        source = readable(obj["source"])
        if obj["what"] == "type":
            return [(f"type({source})", obj["type"] or f"type id {obj['id']}", VALUE)]
        return [(f"id({source})", f"id {obj['id']}", VALUE)]
    if _SIZE_TERM.search(guard):
        # A relation between sizes ("2 <= L['x'].size()[0]"): present or not.
        return [(readable(guard), "guarded", TENSOR)]
    length = _LENGTH.fullmatch(guard)
    if length:
        return [(f"len({readable(length['source'])})", length["value"], VALUE)]
    equals = _EQUALS.fullmatch(guard)
    if equals:
        return [(readable(equals["source"]), equals["value"], VALUE)]
    return [(readable(guard), "guarded", OTHER)]


def mentions_size(guard: str, size: str) -> bool:
    """Whether `guard` ("2 <= x.size()[0]") is about the size or stride `size` ("x.size()[0]"),
    not merely about one whose name ends the same ("xx.size()[0]")."""
    if not re.fullmatch(_SIZE_EXPR, size):
        return False
    return re.search(rf"(?<![\w.\]'\"]){re.escape(size)}", guard) is not None


# -- guard-failure reasons -----------------------------------------------------------------------

# "<entry>: <reason>", the entry a compile id such as 0/1 (or !0/0/1 under compiled autograd).
_REASON_HEAD = re.compile(r"(?P<entry>!?\d+(?:/\d+)+(?:_\d+)?): (?P<body>.*)", re.S)
# dynamo pads the guard code to 60 columns and appends "  # <user line>  # <file:line> in <fn>".
_COMMENT = re.compile(r"\s{2,}#\s")
_STACK_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')
_COMMENTED_FRAME = re.compile(r"#\s(?P<file>[^#\s]+):(?P<line>\d+) in (?P<function>[\w<>]+)")
_HINT = re.compile(r"\(HINT: (?P<hint>.*)\)\s*$")
_SIZE_EXPR = r"[\w.\[\]'\"()]+?\.(?:size|stride)\(\)\[\d+\]"
_RELATION = re.compile(r"(?P<lhs>.+?) (?P<op><=|>=|==|!=|<|>) (?P<rhs>.+)")
_RANGE = re.compile(rf"(?P<low>-?\d+) (?P<low_op><=|<) (?P<subject>{_SIZE_EXPR}) "
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
    if relation and re.search(_SIZE_EXPR, expression):
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
    if not re.fullmatch(_SIZE_EXPR, lhs) and re.fullmatch(_SIZE_EXPR, rhs):
        lhs, op, rhs = rhs, _FLIP[op], lhs
    kind = "stride" if ".stride()" in lhs else "size"
    return kind, lhs, rhs if op == "==" else f"{op} {rhs}", None


def stack_frames(stack_text: str) -> list[tuple[str, int, str]]:
    """(file, line, function) of each frame in a "User stack trace:" block, outermost first."""
    return [(match["file"], int(match["line"]), match["function"])
            for match in _STACK_FRAME.finditer(stack_text)]


def commented_frame(comment: str) -> tuple[str, int, str] | None:
    """(shortened file, line, function) in dynamo's comment ("return x  # m.py:40 in fn")."""
    match = _COMMENTED_FRAME.search(comment)
    return (match["file"], int(match["line"]), match["function"]) if match else None


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
