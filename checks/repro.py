"""Standalone repros of graph breaks: `fullgraph report --repro DIR`.

    with InputRecorder().recording() as recorder:    # repro_record, where the program runs
        main()
    repros = make_repros(report_data, recorder.to_dict(), "repros/")   # afterwards, anywhere

For each distinct graph break, a script that needs nothing but torch: the function dynamo was
compiling when it broke (and the functions and classes of its file it uses, the torch and standard
library imports, the constants), its arguments rebuilt from what they were when dynamo compiled it
(a tensor from its shape, dtype, device, strides and requires_grad, with random values; Python
values as they were) and the global state it had (grad mode, default dtype, ...), the program's
command-line arguments where its code reads sys.argv, the torch.compile call the program made
(backend, fullgraph, dynamic, mode and options), and a check that the graph breaks at the same
line with the same gb_type. Delta debugging drops the statements and arguments the break does not need, its
tries in one long-lived worker (checks/repro_reduce.py); the script it keeps is run in a fresh
interpreter, and only those that print "reproduces" there are called so. Where a script cannot
stand alone (an argument that is a large module or an object of the program's own, a closure),
none is written and the reason is given.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import math
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fullgraph.model.launch import Ended, run_processes

from ._compat import repro as torch_repro
from ._report_data import local_path
from .repro_record import DEFAULT_STATE

__all__ = ["REPRODUCES", "NOT_ON_ITS_OWN", "NOT_WRITTEN", "VERIFY_TIMEOUT_S", "TAIL_LINES",
           "Confirm", "Pending", "ReproPlan", "make_repros", "verify", "verify_all", "verdict",
           "blockers", "compile_call", "slug"]

REPRODUCES = "reproduces"
NOT_ON_ITS_OWN = "does not reproduce on its own"
NOT_WRITTEN = "not written"
VERIFY_TIMEOUT_S = 120.0
_MARK = "  # <- graph break"
TAIL_LINES = 12

# Given what a script that says it reproduces printed: why what it saw is not what the program
# saw (a recompile on another guard), or None. It checks what the script's own assertion cannot.
Confirm = Callable[[str], str | None]


# -- afterwards: one script per break ---------------------------------------------------------

def make_repros(data: dict, recorded: dict, directory: str | os.PathLike, *,
                timeout: float = VERIFY_TIMEOUT_S, reduce: bool = True,
                reduce_seconds: float | None = None) -> list[dict]:
    """Write, run and reduce a repro for each distinct graph break in the report `data`, then
    one for each distinct recompile cause, using the arguments InputRecorder `recorded`; return
    one entry per break and cause (docs/report-format.md). Reduction's tries run in one
    repro_worker.ReproWorker; each status comes from a fresh interpreter.

    reduce_seconds: how long ddmin may take per script (repro_reduce.REDUCE_S by default).
    """
    from ._repro_worker import ReproWorker
    from .repro_recompile import recompile_repros
    from .repro_reduce import REDUCE_S, settle

    Path(directory).mkdir(parents=True, exist_ok=True)
    made = [_break_repro(number, brk, recorded, directory)
            for number, brk in enumerate(data["graph_breaks"], start=1) if not brk["disabled"]]
    made += recompile_repros(data, recorded, directory)
    pending = [item for item in made if isinstance(item, Pending)]
    with ReproWorker() if reduce and pending else contextlib.nullcontext() as worker:
        settled = iter(settle(pending, worker=worker, timeout=timeout,
                              seconds=REDUCE_S if reduce_seconds is None else reduce_seconds))
    return [next(settled) if isinstance(item, Pending) else item for item in made]


def _break_repro(number: int, brk: dict, recorded: dict, directory: str | os.PathLike
                 ) -> dict | Pending:
    """The break's entry if no script can be written, else its script to settle."""
    record = _recorded_frame(brk, recorded["frames"])
    entry = {"kind": "break", "break": number, "gb_type": brk["gb_type"], "compile": None,
             "guard": None, "compile_call": compile_call(record), "file": None,
             "status": NOT_WRITTEN, "why": None, "statements": None, "arguments": None,
             "tries": 0, "tries_lost": 0, "script": None}
    plan = _plan(brk, record)
    if isinstance(plan, str):
        return {**entry, "why": plan}
    path = Path(directory) / f"break_{number}_{slug(brk['gb_type'])}.py"
    return Pending(entry, path, plan, ReproPlan.script)


@dataclass
class Pending:
    """A repro script to reduce and run: `entry` (with no status yet) for `plan`'s script as
    `render` makes it, at `path`; `confirm`, if any, checks what it printed."""

    entry: dict
    path: Path
    plan: ReproPlan
    render: Callable[[ReproPlan], str]
    confirm: Confirm | None = None


def verify(path: str | os.PathLike, *, timeout: float = VERIFY_TIMEOUT_S,
           confirm: Confirm | None = None) -> tuple[str, str | None]:
    """Run the script at `path` in a fresh interpreter: (REPRODUCES, None), or (NOT_ON_ITS_OWN,
    why: how it ended and the last lines it wrote, or what `confirm` found)."""
    [result] = verify_all([path], timeout=timeout, confirms=[confirm])
    return result


def verify_all(paths: list[str | os.PathLike], *, timeout: float = VERIFY_TIMEOUT_S,
               confirms: list[Confirm | None] | None = None) -> list[tuple[str, str | None]]:
    """`verify` for each script (with the confirm of the same index), as many at once as there
    are CPUs: each still in an interpreter of its own, and one that fails stops none of the
    others."""
    confirms = confirms or [None] * len(paths)
    at_once = os.cpu_count() or 1
    verdicts = []
    for start in range(0, len(paths), at_once):
        with tempfile.TemporaryDirectory(prefix="fullgraph-repro-") as workdir:
            launched = run_processes([[os.fspath(path)] for path in paths[start:start + at_once]],
                                     workdir=workdir, timeout=timeout, grace=math.inf)
        verdicts += [verdict(ended.stdout, _how(ended), ended.output(TAIL_LINES), confirm)
                     for ended, confirm in zip(launched.ended, confirms[start:start + at_once],
                                               strict=True)]
    return verdicts


def _how(ended: Ended) -> str | None:
    """How a script ended, None for exit 0."""
    return ended.stopped or (f"exit {ended.returncode}" if ended.returncode else None)


def verdict(printed: str, how: str | None, tail: str, confirm: Confirm | None = None
            ) -> tuple[str, str | None]:
    """What a script that ended `how` (None: exit 0), having printed `printed` on stdout and
    `tail` last, says: (REPRODUCES, None) when it ended by itself with REPRODUCES last and
    `confirm` finds nothing amiss in what it printed; else (NOT_ON_ITS_OWN, why)."""
    if how is None and printed.rstrip().endswith(REPRODUCES):
        differs = confirm(printed) if confirm is not None else None
        return (REPRODUCES, None) if differs is None else (NOT_ON_ITS_OWN, differs)
    return NOT_ON_ITS_OWN, f"{how or 'exit 0'}: {tail.strip()}".strip()


def slug(gb_type: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", gb_type.lower()).strip("-")[:40] or "break"


def _plan(brk: dict, record: dict | None) -> ReproPlan | str:
    """The script for `brk` in the function `record` describes, or why there is none."""
    if record is None:
        return ("no arguments were recorded for the functions on its stack (the program ended "
                "before the compile finished, or the function was compiled before the report began)")
    record = _at_a_break(record)
    found = blockers(record)
    if found:
        return "; ".join(found)
    try:
        source = Path(record["filename"]).read_text(encoding="utf-8")
        return ReproPlan.build(source, record, brk)
    except (OSError, SyntaxError, LookupError) as error:
        return f"the source of {record['function']} cannot be read: {error}"


def _at_a_break(record: dict) -> dict:
    """`record` with the arguments and global state ("state") of its first compile that met a
    graph break (a function may break only under no_grad, say), else of its first compile."""
    compile_id = next(iter(record["broke"] or record["compiles"]))
    return {**record, "arguments": record["compiles"][compile_id],
            "state": record["global_state"][compile_id]}


def _recorded_frame(brk: dict, frames: list[dict]) -> dict | None:
    """The record of the innermost function on the break's stack that dynamo compiled on its own
    (with the arguments it was called with). A break torch met while handling an earlier one is
    about the frame it was compiling (a loop in it, say): that frame's, where it was recorded."""
    stack = brk["frames"]
    if brk["caused_by"]:
        stack = [line for line in stack if line["function"] == brk["compiled_function"]] or stack
    for line in reversed(stack):
        filename = local_path(line["filename"])
        for record in frames:
            if ((record["filename"], record["function"]) == (filename, line["function"])
                    and record["firstlineno"] <= line["lineno"]):
                return record
    return None


def compile_call(record: dict | None) -> dict | None:
    """The torch.compile call the program made on the function `record` describes, for the
    report: {backend, fullgraph, dynamic, mode, options}, each option as the Python expression
    of its value (None for one a script cannot rebuild); None without a record."""
    if record is None:
        return None
    call = record["compile"]
    spec = call["options"]
    options = None if spec is None or spec["kind"] != "dict" else {
        name: None if _unbuildable(item) else _expression(item)
        for name, item in spec["items"].items()}
    return {"backend": call["backend"], "fullgraph": call["fullgraph"],
            "dynamic": call["dynamic"], "mode": call["mode"], "options": options}


def blockers(record: dict) -> list[str]:
    """Why the script could not stand alone: each argument it cannot rebuild, a closure."""
    found = [f"argument `{argument['name']}` is {_unbuildable(argument['value'])}"
             for argument in record["arguments"] if _unbuildable(argument["value"])]
    if record["closure"]:
        found.append(f"{record['function']} is a closure over {', '.join(record['closure'])}, "
                     f"which a script cannot rebuild")
    return found


def _unbuildable(spec: dict) -> str | None:
    kind = spec["kind"]
    if kind == "opaque":
        return f"a {spec['type']}, which a script cannot rebuild"
    if kind == "module" and spec["expression"] is None:
        return (f"a torch.nn.Module ({spec['type']}, {spec['parameters']:,} parameters) that a "
                f"script cannot rebuild")
    items = spec.get("items")
    if kind in ("list", "tuple", "dict"):
        return next(filter(None, map(_unbuildable, items.values() if kind == "dict" else items)), None)
    return None


# -- the script -------------------------------------------------------------------------------

class ReproPlan:
    """A repro script made of parts that reduction can drop: the root function's top-level
    statements (`kept`) and its arguments (`arguments`)."""

    def __init__(self, *, root: ast.FunctionDef, lines: list[str], helpers: list[str],
                 preamble: list[str], record: dict, brk: dict | None, pinned: int | None) -> None:
        self.root, self.lines, self.helpers, self.preamble = root, lines, helpers, preamble
        self.record, self.brk = record, brk
        self.location = brk["frames"][-1] if brk else None
        # The statement holding the breaking line, when the break is in the root: never dropped.
        self.pinned = pinned
        self.kept = list(range(len(root.body)))
        self.arguments = [argument["name"] for argument in record["arguments"]]

    @classmethod
    def build(cls, source: str, record: dict, brk: dict | None) -> ReproPlan:
        """The plan for `brk` in the function `record` describes; for no break, just the
        function (a recompile's script)."""
        tree = ast.parse(source)
        lines = source.splitlines()
        root = _find_function(tree, record["function"], record["firstlineno"])
        if brk is None:
            helpers, preamble = _dependencies(tree, root, lines, mark=None)
            return cls(root=root, lines=lines, helpers=helpers, preamble=preamble, record=record,
                       brk=None, pinned=None)
        location = brk["frames"][-1]
        same_file = local_path(location["filename"]) == record["filename"]
        in_root = (same_file and location["function"] == root.name
                   and root.lineno <= location["lineno"] <= root.end_lineno)
        pinned = next((index for index, statement in enumerate(root.body)
                       if statement.lineno <= location["lineno"] <= statement.end_lineno), -1)
        helpers, preamble = _dependencies(tree, root, lines,
                                          mark=location if same_file and not in_root else None)
        if not in_root and not any(_MARK in helper for helper in helpers):
            raise LookupError(f"the breaking line, {location['filename']}:{location['lineno']} in "
                              f"{location['function']}, is not in a function of "
                              f"{os.path.basename(record['filename'])} the script can copy")
        return cls(root=root, lines=lines, helpers=helpers, preamble=preamble, record=record,
                   brk=brk, pinned=pinned if in_root else None)

    def with_parts(self, kept: list[int], arguments: list[str]) -> ReproPlan:
        plan = ReproPlan.__new__(ReproPlan)
        plan.__dict__.update(self.__dict__, kept=kept, arguments=arguments)
        return plan

    def script(self) -> str:
        head = self.head(self._docstring())
        number = next(index for index, text in enumerate(head.splitlines(), start=1)
                      if text.endswith(_MARK))
        inputs = self.inputs_text(self.record["arguments"])
        main = _SCRIPT_MAIN.format(gb_type=self.brk["gb_type"], line=number, inputs=inputs,
                                   compile=self.compile_text(), argv=self.argv_text(head),
                                   state=self.state_text([self.record["state"]], 0))
        return self.whole(head, main, torch_repro.REPRO_BREAK_PROBE)

    def head(self, docstring: str) -> str:
        """The script up to the user's code, included."""
        code = "\n\n\n".join([*self.helpers, self._root_text()])
        return "\n".join([f'"""{docstring}"""', "", "import contextlib", "import logging", "",
                          *self.preamble, "", "", code])

    @staticmethod
    def whole(head: str, main: str, probe: str) -> str:
        """The script: `head`, `main` (which defines main()), `probe` and the tensor helper."""
        tail = [main, probe.strip(), *([_TENSOR] if "tensor((" in main else []),
                'if __name__ == "__main__":\n    main()\n']
        return head + "\n\n\n" + "\n\n\n".join(tail)

    def _docstring(self) -> str:
        where = f"{self.location['filename']}:{self.location['lineno']} in {self.location['function']}"
        return textwrap.fill(
            f"Graph break {self.brk['gb_type']!r} at {where}, standalone: written by `fullgraph "
            f"report --repro`. Needs only torch. Prints {REPRODUCES!r} when torch.compile still "
            f"breaks at the marked line with the same gb_type, and raises otherwise. Tensor "
            f"arguments have the recorded shapes, dtypes, devices and strides, with random values.",
            width=96)

    def _root_text(self) -> str:
        root, lines = self.root, self.lines
        args = _signature(root, self.arguments)
        decorators = [f"@{ast.unparse(decorator)}" for decorator in root.decorator_list
                      if "compile" not in ast.unparse(decorator)]
        header = f"def {root.name}({args}):" + (_MARK if self.pinned == -1 else "")
        body = []
        previous_end = root.body[0].lineno - 1
        for index, statement in enumerate(root.body):
            start = previous_end + 1
            previous_end = statement.end_lineno
            if index not in self.kept:
                continue
            for number in range(start, statement.end_lineno + 1):
                mark = self.pinned is not None and number == self.location["lineno"]
                body.append(lines[number - 1] + (_MARK if mark else ""))
        body = textwrap.dedent("\n".join(body)).splitlines() or ["pass"]
        return "\n".join([*decorators, header, *("    " + text if text.strip() else "" for text in body)])

    def inputs_text(self, specs: list[dict]) -> str:
        """`(args), {kwargs}` rebuilding the recorded arguments `specs` that the plan keeps."""
        positional, keyword = [], []
        for argument in specs:
            if argument["name"] not in self.arguments:
                continue
            expression = _expression(argument["value"])
            if argument["kind"] == "positional":
                positional.append(expression)
            elif argument["kind"] == "varargs":
                positional.append(f"*{expression}")
            elif argument["kind"] == "keyword":
                keyword.append(f"{argument['name']!r}: {expression}")
            else:
                keyword.append(f"**{expression}")
        args = "".join(f"{item}, " for item in positional)
        text = f"({args}), {{{', '.join(keyword)}}}"
        if len(text) <= 72:
            return text
        # One argument a line: tensors with their strides do not fit on one.
        lines = ["(", *(f"        {item}," for item in positional), "    ), {"]
        lines += [f"        {item}," for item in keyword]
        return "\n".join([*lines, "    }"])

    def argv_text(self, head: str) -> str:
        """The line, after a newline, that gives the script the program's command-line
        arguments, where the code in `head` reads sys.argv (as `sys.argv`, or a name imported
        from sys); else none."""
        spellings = _argv_spellings(self.preamble)
        if not spellings:  # most scripts: no need to read the code
            return ""
        used = next((ast.unparse(node) for node in ast.walk(ast.parse(head))
                     if isinstance(node, (ast.Attribute, ast.Name))
                     and ast.unparse(node) in spellings), None)
        if used is None:
            return ""
        # In place: a name imported from sys is the same list as sys.argv.
        return (f"\n    {used}[1:] = {self.record['argv'][1:]!r}  # the program's arguments, "
                f"which its code reads")

    @staticmethod
    def state_text(states: list[dict[str, str]], index: int) -> str:
        """The lines, each after a newline, that set the global state that compile `index` of
        the replayed `states` had: each part it had otherwise than torch's default, and each part
        the compiles had differently (the default too, so that a later compile gets it back)."""
        lines = [line for name, line in states[index].items()
                 if any(state[name] != line for state in states)
                 or (name in DEFAULT_STATE and line != DEFAULT_STATE[name])]
        return "".join(f"\n    {line}  # as it was when dynamo compiled it" for line in lines)

    def compile_text(self) -> str:
        """torch.compile as the program called it. A callable backend becomes eager, without the
        mode and options it was given: graph breaks and recompiles happen in dynamo, before any
        backend sees a graph."""
        call = self.record["compile"]
        head = (f"torch.compile({self.root.name}, backend={call['backend'] or 'eager'!r}, "
                f"fullgraph={call['fullgraph']}, dynamic={call['dynamic']}")
        if call["backend"] is None or (call["mode"] is None and call["options"] is None):
            return head + ")"
        lines = ["torch.compile(", head.removeprefix("torch.compile(") + ","]
        if call["cudagraphs"] and _on_cpu(self.record["arguments"]):
            lines += ["# As the program called it. CUDA graphs need a GPU: with these CPU tensors",
                      "# inductor skips them, as it did in the program; graph breaks and recompiles",
                      "# happen in dynamo, before the backend."]
        if call["mode"] is not None:
            lines.append(f"mode={call['mode']!r},")
        if call["options"] is not None:
            lines += _options_lines(call["options"])
        return "\n        ".join(lines) + "\n    )"


def _on_cpu(arguments: list[dict]) -> bool:
    """Whether every tensor among the recorded `arguments` is on the CPU."""
    def devices(spec: dict) -> list[str]:
        if spec["kind"] == "tensor":
            return [spec["device"]]
        items = spec.get("items") or []
        return [device for item in (items.values() if spec["kind"] == "dict" else items)
                for device in devices(item)]
    return all(device == "cpu" for argument in arguments for device in devices(argument["value"]))


def _options_lines(spec: dict) -> list[str]:
    """`options={...},` for torch.compile's recorded `options`, leaving out (and naming) those a
    script cannot rebuild: they configure the backend, and the break is dynamo's."""
    if spec["kind"] != "dict":
        return [f"# options left out: a {spec['type']}, which a script cannot rebuild"]
    items = spec["items"]
    left_out = [name for name, item in items.items() if _unbuildable(item)]
    kept = {"kind": "dict", "items": {name: item for name, item in items.items()
                                      if name not in left_out}}
    note = ([f"# left out of options: {', '.join(left_out)}, which a script cannot rebuild"]
            if left_out else [])
    return [*note, f"options={_expression(kept)},"]


def _find_function(tree: ast.Module, name: str, firstlineno: int) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            if start == firstlineno or node.lineno == firstlineno:
                if node.body[0].lineno == node.lineno:
                    raise LookupError(f"{name} is defined on one line")
                return node
    raise LookupError(f"no function {name} starts at line {firstlineno}")


def _signature(root: ast.FunctionDef, keep: list[str]) -> str:
    """The root's parameters without annotations, those not in `keep` dropped."""
    args = ast.parse(f"def f({ast.unparse(root.args)}): pass").body[0].args
    for node in ast.walk(args):
        if isinstance(node, ast.arg):
            node.annotation = None
    positional = [*args.posonlyargs, *args.args]
    defaults = dict(zip([arg.arg for arg in positional][len(positional) - len(args.defaults):],
                        args.defaults, strict=True))
    args.posonlyargs = [arg for arg in args.posonlyargs if arg.arg in keep]
    args.args = [arg for arg in args.args if arg.arg in keep]
    kept = [*args.posonlyargs, *args.args]
    args.defaults = [defaults[arg.arg] for arg in kept if arg.arg in defaults]
    if args.defaults and len(args.defaults) < len(kept) and kept[-1].arg not in defaults:
        args.defaults = []  # a dropped middle default would leave one without a value
    pairs = [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
             if arg.arg in keep]
    args.kwonlyargs, args.kw_defaults = [arg for arg, _ in pairs], [default for _, default in pairs]
    args.vararg = args.vararg if args.vararg and args.vararg.arg in keep else None
    args.kwarg = args.kwarg if args.kwarg and args.kwarg.arg in keep else None
    return ast.unparse(args)


def _dependencies(tree: ast.Module, root: ast.FunctionDef, lines: list[str], *, mark: dict | None
                  ) -> tuple[list[str], list[str]]:
    """(the file's top-level functions and classes the root uses, transitively, in file order;
    the imports of torch and the standard library and the constants they use)."""
    top = {}
    for node in tree.body:
        for name in _defined_names(node):
            top.setdefault(name, node)
    wanted, queue = set(), [root]
    while queue:
        for name in _free_names(queue.pop()):
            node = top.get(name)
            if node is not None and node is not root and id(node) not in wanted:
                wanted.add(id(node))
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
                    queue.append(node)
    helpers, preamble = [], ["import torch"]
    for node in tree.body:
        if id(node) not in wanted:
            continue
        text = _node_text(node, lines, mark)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            helpers.append(text)
        elif _standalone_statement(node) and text not in preamble:
            preamble.append(text)
    return helpers, preamble


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(alias.asname or alias.name).split(".")[0] for alias in node.names]
    if isinstance(node, ast.Assign):
        return [target.id for target in node.targets if isinstance(target, ast.Name)]
    return []


def _argv_spellings(preamble: list[str]) -> set[str]:
    """How the code under these imports spells sys.argv: `sys.argv` (or `alias.argv`), `argv`."""
    spellings = set()
    for node in ast.walk(ast.parse("\n".join(preamble))):
        if isinstance(node, ast.Import):
            spellings |= {f"{alias.asname or 'sys'}.argv" for alias in node.names
                          if alias.name == "sys"}
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            spellings |= {alias.asname or "argv" for alias in node.names if alias.name == "argv"}
    return spellings


def _free_names(node: ast.AST) -> set[str]:
    loaded = {name.id for name in ast.walk(node) if isinstance(name, ast.Name)
              and isinstance(name.ctx, ast.Load)}
    return loaded - set(dir(builtins))


def _standalone_statement(node: ast.stmt) -> bool:
    """An import of torch or the standard library, or a constant made of literals and them."""
    if isinstance(node, ast.Import):
        return all(_needs_only_torch(alias.name) for alias in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and _needs_only_torch(node.module or "")
    if not isinstance(node, ast.Assign):
        return False
    try:
        ast.literal_eval(node.value)
        return True
    except ValueError:  # made by calls: only those of torch and math rebuild the same
        return _free_names(node.value) <= {"torch", "math"}


def _needs_only_torch(module: str) -> bool:
    root = module.split(".")[0]
    return root == "torch" or root in sys.stdlib_module_names


def _node_text(node: ast.stmt, lines: list[str], mark: dict | None) -> str:
    start = min([node.lineno] + [decorator.lineno for decorator in getattr(node, "decorator_list", [])])
    chosen = lines[start - 1:node.end_lineno]
    if mark is not None and start <= mark["lineno"] <= node.end_lineno:
        chosen[mark["lineno"] - start] += _MARK
    return textwrap.dedent("\n".join(chosen))


def _expression(spec: dict) -> str:
    """Python that rebuilds a value `describe` described."""
    kind = spec["kind"]
    if kind == "tensor":
        return _tensor_expression(spec)
    if kind in ("value", "module"):
        return spec["expression"]
    if kind == "dict":
        return "{" + ", ".join(f"{key!r}: {_expression(item)}" for key, item in spec["items"].items()) + "}"
    items = [_expression(item) for item in spec["items"]]
    if kind == "tuple":
        return "(" + "".join(f"{item}, " for item in items) + ")"
    return "[" + ", ".join(items) + "]"


def _tensor_expression(spec: dict) -> str:
    dtype = f"torch.{spec['dtype']}"
    grad = ", requires_grad=True" if spec["requires_grad"] else ""
    if spec["values"] is not None and not spec["shape"]:
        return (f"torch.tensor({spec['values'][0]!r}, dtype={dtype}, device={spec['device']!r}"
                f"{grad})")
    if spec["values"] is not None:
        return (f"torch.tensor({spec['values']!r}, dtype={dtype}, device={spec['device']!r})"
                f".reshape({tuple(spec['shape'])!r}){'.requires_grad_()' if grad else ''}")
    return f"tensor({tuple(spec['shape'])!r}, {tuple(spec['stride'])!r}, {dtype}, {spec['device']!r}{grad})"


_SCRIPT_MAIN = '''\
GB_TYPE = {gb_type!r}
LINE = {line}  # the line marked "<- graph break" above


def main():
    torch.manual_seed(0){argv}{state}
    args, kwargs = {inputs}
    compiled = {compile}
    with graph_breaks_heard() as heard:
        try:
            compiled(*args, **kwargs)
        except Exception:
            if not breaks_here(heard):
                raise
            # It broke where it should, then failed as the program may have: the break is the point.
    if not breaks_here(heard):
        seen = [(line, reason[0] if reason else "") for filename, line, reason in heard
                if filename == __file__]
        raise AssertionError(f"expected a graph break {{GB_TYPE!r}} at line {{LINE}}; heard {{seen}}")
    print("{reproduces}")


def breaks_here(heard):
    """Whether torch broke the graph at LINE of this file with GB_TYPE."""
    return any(filename == __file__ and line == LINE and GB_TYPE in reason
               for filename, line, reason in heard)'''.replace("{reproduces}", REPRODUCES)

_TENSOR = '''\
def tensor(shape, stride, dtype, device, requires_grad=False):
    """Random values in a tensor of this shape and these strides."""
    size = 1 + sum((length - 1) * step for length, step in zip(shape, stride) if length)
    if dtype.is_floating_point or dtype.is_complex:
        storage = torch.randn(size, dtype=dtype, device=device)
    elif dtype == torch.bool:
        storage = torch.randint(0, 2, (size,), device=device).bool()
    else:
        storage = torch.randint(0, 8, (size,), dtype=dtype, device=device)
    return storage.as_strided(shape, stride).detach().requires_grad_(requires_grad)'''
