"""Guard code, as a cache entry's guard manager lists it, read.

Reads torch._dynamo's guard text: `check_tensor(L['x'], Tensor, DispatchKeySet(CPU, ...),
torch.float32, device=None, requires_grad=False, size=[2, 3], stride=[3, 1])` (written by
torch/_dynamo/guards.py get_tensor_guard_code_part the same way in 2.11 to 2.15), `L['n'] == 1`,
`___check_obj_id(G['__builtins_dict___0']['len'], 9001)`, `2 <= L['x'].size()[0]`; and a cache
entry's CacheEntry.guard_manager (code_parts, root.get_epilogue_lambda_guards). tests/checks/
test_torch_text.py holds each form as those versions write it.

Guard code names some globals by names dynamo makes up per compile (`__builtins_dict___0` in one
compile, `__builtins_dict___2` in the next, for the same builtins); `normalised` writes those the
same way every time, so one guard compared across compiles is one guard.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import missing

__all__ = [
    "entry_guards",
    "normalised",
    "readable",
    "guard_facts",
    "mentions_size",
    "names_size",
    "SIZE_EXPR",
    "TENSOR",
    "VALUE",
    "OTHER",
    "source_origin",
    "guard_source",
    "tensor_sizes",
    "size_bound",
]


def entry_guards(entry: Any) -> list[str]:
    """One cache entry's guards as code, one a line, as dynamo's guard manager prints them.

    code_parts holds the guard tree; the symbolic-shape guards ("2 <= L['x'].size()[0]") are
    epilogue lambda guards outside it, so they are read separately, without their comments.
    """
    manager = getattr(entry, "guard_manager", None)
    parts = getattr(manager, "code_parts", None)
    if parts is None:
        raise missing("CacheEntry.guard_manager.code_parts")
    root = getattr(manager, "root", None)
    epilogue = getattr(root, "get_epilogue_lambda_guards", None)
    shape_parts = [part.split("#")[0].rstrip()
                   for guard in (epilogue() if epilogue is not None else [])
                   for part in guard.verbose_code_parts()]
    return [*parts, *shape_parts]


# -- names dynamo makes up per compile -----------------------------------------------------------

_ODICT_GETITEM = re.compile(r"___odict_getitem\((?P<mapping>(?:(?!___odict_getitem\().)+?), "
                            r"(?P<key>'[^']*'|\"[^\"]*\"|-?\d+)\)")
_SYNTHETIC_GLOBALS: list[tuple[re.Pattern, Any]] = [
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


def source_origin(source: str) -> str:
    """What a readable guard source watches: "global" (`G['COUNT']`), "module attribute"
    (`self.steps`) or "argument" (`x.size()[0]`)."""
    if source.startswith("G["):
        return "global"
    if source.startswith("self."):
        return "module attribute"
    return "argument"


def guard_source(path: str) -> str:
    """tokens -> L['tokens'], cache.k -> L['cache'].k: an argument path as guard code writes it."""
    root = re.match(r"[A-Za-z_]\w*", path)[0]
    return f"L['{root}']{path[len(root):]}"


# -- what a guard checks -------------------------------------------------------------------------

# What a guard checks, by how likely a change in it made a function compile again: a tensor's
# sizes, strides, dtype or device (and relations between sizes); a Python value, type, identity,
# length or the global state; anything else (an attribute's absence, a dict's key).
TENSOR, VALUE, OTHER = "tensor", "value", "other"

# A size or stride as guards and recompile reasons write it: `x.size()[0]`, `L['x'].stride()[1]`.
SIZE_EXPR = r"[\w.\[\]'\"()]+?\.(?:size|stride)\(\)\[\d+\]"

_CHECK_TENSOR = re.compile(
    r"check_tensor\((?P<source>.+?), (?P<type>\w+), (?P<keys>DispatchKeySet\(.*?\)), "
    r"(?P<dtype>[\w.]+), device=(?P<device>[^,]+), requires_grad=(?P<requires_grad>\w+), "
    r"size=\[(?P<size>.*?)\], stride=\[(?P<stride>.*?)\]\)")
_TENSOR_SIZES = re.compile(r"check_tensor\((?P<source>.+?), .*?size=\[(?P<size>.*?)\]")
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
    if not re.fullmatch(SIZE_EXPR, size):
        return False
    return re.search(rf"(?<![\w.\]'\"]){re.escape(size)}", guard) is not None


def names_size(text: str, path: str, axis: int) -> bool:
    """Whether `text` (a guard failure's source and expected value) names `path.size()[axis]`
    itself, not a longer path that ends the same ("cache.x.size()[0]" for "x")."""
    pattern = r"(?<![\w.'\]])" + re.escape(f"{path}.size()[{axis}]") + r"(?!\w)"
    return re.search(pattern, text) is not None


def tensor_sizes(guard: str) -> tuple[str, list[str]] | None:
    """(source, its sizes as written, "None" for a dynamic one) of a check_tensor guard; None for
    any other guard."""
    match = _TENSOR_SIZES.match(guard)
    return (match["source"], match["size"].split(", ")) if match else None


def size_bound(guard: str, term: str) -> str | None:
    """">= 2" from "2 <= L['x'].size()[0]", "<= 512" from "L['x'].size()[0] <= 512"; None for
    guards that are not a numeric bound on `term` (strides, sizes equal to other sizes)."""
    number = r"(?P<number>-?\d+)"
    below = re.fullmatch(number + r" (?P<op><=|<) " + re.escape(term), guard)
    if below:
        return f"{'>=' if below['op'] == '<=' else '>'} {below['number']}"
    above = re.fullmatch(re.escape(term) + r" (?P<op><=|<) " + number, guard)
    return f"{above['op']} {above['number']}" if above else None
