"""Recompile budgets per dimension, and sweeps over randomly drawn shapes.

A model's dimensions do not cost the same: a growing batch may be allowed one recompile (static
first, then dynamic), a prompt length none. `Dim` names a dimension by the (argument, axis) pairs
that carry it and gives it a budget; `assert_dims` calls a function on inputs of varying shape,
charges every recompile to the dimensions whose guards failed, and says how dynamo treated each
dimension: dynamic, static in every graph, or specialised for sizes 0 and 1.

    batch = Dim("batch", ("tokens", 0), ("cache.k[0]", 0), max_recompiles=1)
    seq = Dim("seq", ("tokens", 1), ("input_pos", 0))
    assert_dims(prefill, inputs, [batch, seq], mark_dynamic=[seq])

`shapes` is a hypothesis strategy for such sizes and `sweep_shapes` runs a function over drawn
sizes. hypothesis is imported only when `shapes` is called.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._compat import dynamo as torch_dynamo
from ._compat import guards as torch_guards
from ._message import counted, format_failure
from .guards import GuardSet, guards_of
from .recompiles import (
    CompileEvent,
    CompileReport,
    RecompileBudgetError,
    check_count,
    compiled_run,
    failure_lines,
)

__all__ = ["Dim", "DimResult", "DimReport", "dim_report", "assert_dims", "dim_sizes", "sweep_shapes"]

# An argument path as written in Python: tokens, cache.k, inputs[0], self.buffer
_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\]|\['[^']*'\])*")
_PATH_STEP = re.compile(r"\.(?P<attr>[A-Za-z_]\w*)|\[(?P<index>\d+)\]|\['(?P<key>[^']*)'\]")


@dataclass(frozen=True, init=False)
class Dim:
    """A named dimension, the (argument path, axis) pairs that carry it, and its budget.

    Dim("batch", ("tokens", 0), ("cache.k[0]", 0), max_recompiles=1)

    Paths start at an argument of the function as its signature names it (for an nn.Module, of
    its forward; `self` is the module) and may go on by attribute or index: "cache.k",
    "inputs[0]". List every tensor that carries the dimension: dynamo may name any of them.
    """

    name: str
    at: tuple[tuple[str, int], ...]
    max_recompiles: int

    def __init__(self, name: str, *at: tuple[str, int], max_recompiles: int = 0) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not at:
            raise ValueError(f"Dim {name!r} needs at least one (argument path, axis) pair")
        for pair in at:
            if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str)
                    or isinstance(pair[1], bool) or not isinstance(pair[1], int)):
                raise TypeError(f"Dim {name!r}: each place must be an (argument path, axis) "
                                f"tuple such as ('tokens', 1), got {pair!r}")
            if not _PATH.fullmatch(pair[0]):
                raise ValueError(f"Dim {name!r}: {pair[0]!r} is not an argument path such as "
                                 f"'tokens', 'cache.k' or 'inputs[0]'")
            if pair[1] < 0:
                raise ValueError(f"Dim {name!r}: axis {pair[1]} of {pair[0]} must be >= 0, "
                                 f"as torch numbers axes in its guards")
        check_count("max_recompiles", max_recompiles)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "at", tuple(at))
        object.__setattr__(self, "max_recompiles", max_recompiles)

    def terms(self) -> tuple[str, ...]:
        """The size expressions of this dimension as torch writes them: `tokens.size()[1]`."""
        return tuple(f"{path}.size()[{axis}]" for path, axis in self.at)


@dataclass(frozen=True)
class DimResult:
    """How one dimension fared: the sizes it took, what it cost, how dynamo compiled it."""

    dim: Dim
    sizes: tuple[int, ...]  # distinct sizes seen in the inputs, first seen first
    recompiles: tuple[CompileEvent, ...]  # recompiles in which one of its size guards failed
    graphs: tuple[tuple[str, str], ...]  # (compile id, "static 5" or "dynamic ...") per graph
    verdict: str  # e.g. "static in 0/0, dynamic from 0/1 (automatic dynamic)"

    @property
    def over_budget(self) -> bool:
        return len(self.recompiles) > self.dim.max_recompiles

    def summary(self) -> str:
        graphs = ", ".join(f"{compile_id} {state}" for compile_id, state in self.graphs)
        return (f"{self.dim.name}: {counted(len(self.recompiles), 'recompile')} (budget "
                f"{self.dim.max_recompiles}); sizes {_sizes(self.sizes)}; {self.verdict}; "
                f"graphs: {graphs or 'none'}")

    def to_dict(self) -> dict:
        return {"name": self.dim.name, "at": [list(pair) for pair in self.dim.at],
                "max_recompiles": self.dim.max_recompiles, "sizes": list(self.sizes),
                "recompiles": [event.compile_id for event in self.recompiles],
                "graphs": [list(graph) for graph in self.graphs], "verdict": self.verdict}


@dataclass(frozen=True)
class DimReport:
    """Every dimension's result, the recompiles charged to none of them, and all compiles."""

    dims: tuple[DimResult, ...]
    others: tuple[CompileEvent, ...]  # recompiles (limit hits included) no Dim was charged for
    compiles: CompileReport

    def __getitem__(self, name: str) -> DimResult:
        for result in self.dims:
            if result.dim.name == name:
                return result
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"{counted(len(self.compiles.events), 'compile')}, "
                 f"{counted(len(self.compiles.recompiles), 'recompile')}"]
        lines += [f"  {result.summary()}" for result in self.dims]
        if self.others:
            lines.append(f"  other recompiles: {', '.join(e.compile_id for e in self.others)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"dims": [result.to_dict() for result in self.dims],
                "others": [event.compile_id for event in self.others],
                "compiles": self.compiles.to_dict()}


def _sizes(sizes: Sequence[int]) -> str:
    shown = ", ".join(str(size) for size in sizes[:12])
    return shown + (f", ... ({len(sizes)} in all)" if len(sizes) > 12 else "")


# -- running -------------------------------------------------------------------------------------

def dim_report(fn: Callable, inputs: Iterable[Any], dims: Sequence[Dim], *,
               mark_dynamic: Sequence[Dim | str] = (), dynamic: bool | None = None,
               backend: Any = "eager") -> DimReport:
    """Compile `fn` afresh, call it on every input, and report each dimension. Raises nothing.

    mark_dynamic: the dims (or their names) to torch._dynamo.mark_dynamic on every input before
    the call, on every tensor that carries them.
    """
    dims = _checked_dims(dims)
    marked = _marked(mark_dynamic, dims)
    recorder = _SizeRecorder(fn, dims, marked)
    with compiled_run(fn, inputs, dynamic=dynamic, backend=backend, before_call=recorder,
                      checker="dim_report") as (report, compiled):
        graphs = guards_of(compiled)
    return _dim_report(report, dims, recorder, graphs)


def assert_dims(fn: Callable, inputs: Iterable[Any], dims: Sequence[Dim], *,
                max_other_recompiles: int = 0, mark_dynamic: Sequence[Dim | str] = (),
                dynamic: bool | None = None, backend: Any = "eager",
                msg: str | None = None) -> DimReport:
    """Fail if a dimension costs more recompiles than its Dim allows.

    A recompile is charged to every dimension whose size guard failed in it (one whose guards
    name two dimensions counts for both); recompiles charged to none count against
    `max_other_recompiles`. A function hitting the recompile limit fails whatever the budgets.
    Raises RecompileBudgetError; returns the DimReport.
    """
    __tracebackhide__ = True
    check_count("max_other_recompiles", max_other_recompiles)
    report = dim_report(fn, inputs, dims, mark_dynamic=mark_dynamic, dynamic=dynamic,
                        backend=backend)
    message = _dims_message(report, max_other_recompiles, msg)
    if message:
        raise RecompileBudgetError(message, report)
    return report


def _checked_dims(dims: Sequence[Dim]) -> tuple[Dim, ...]:
    if isinstance(dims, Dim) or not isinstance(dims, Sequence):
        raise TypeError(f"dims must be a sequence of Dim, got {type(dims).__name__}")
    for dim in dims:
        if not isinstance(dim, Dim):
            raise TypeError(f"dims must hold Dim objects, got {type(dim).__name__}")
    names = [dim.name for dim in dims]
    if len(set(names)) != len(names):
        raise ValueError(f"dims has repeated names: {names}")
    return tuple(dims)


def _marked(mark_dynamic: Sequence[Dim | str], dims: tuple[Dim, ...]) -> tuple[Dim, ...]:
    if isinstance(mark_dynamic, (str, Dim)):
        mark_dynamic = [mark_dynamic]
    by_name = {dim.name: dim for dim in dims}
    marked = []
    for item in mark_dynamic:
        dim = by_name.get(item) if isinstance(item, str) else item
        if not isinstance(dim, Dim):
            raise ValueError(f"mark_dynamic names {item!r}, which is not one of dims "
                             f"({', '.join(by_name)})")
        marked.append(dim)
    return tuple(marked)


class _SizeRecorder:
    """Before each call: resolve every Dim on the arguments, note its size, mark it dynamic."""

    def __init__(self, fn: Callable, dims: tuple[Dim, ...], marked: tuple[Dim, ...]) -> None:
        self._fn = torch_dynamo.compiled_target(fn)
        # A module's own signature is __call__'s (*args, **kwargs): read forward's.
        called = self._fn.forward if isinstance(self._fn, torch.nn.Module) else self._fn
        self._signature = inspect.signature(called)
        self._dims, self._marked = dims, marked
        self.sizes: dict[str, list[int]] = {dim.name: [] for dim in dims}
        # Checked now, before dynamo is reset: a Dim naming no argument is refused at no cost.
        for dim in dims:
            for path, _ in dim.at:
                root = _root(path)
                if root not in self._signature.parameters and not self._self_is(root):
                    raise ValueError(f"Dim {dim.name!r}: {root!r} is not an argument of "
                                     f"{self._name()}{self._signature}")

    def __call__(self, args: tuple) -> None:
        try:
            arguments = self._signature.bind(*args).arguments
        except TypeError as error:
            raise TypeError(f"an input does not fit {self._name()}{self._signature}: "
                            f"{error}") from None
        for dim in self._dims:
            for path, axis in dim.at:
                tensor = self._resolve(arguments, path, dim)
                if axis >= tensor.dim():
                    raise ValueError(f"Dim {dim.name!r}: {path} has {tensor.dim()} dimensions, "
                                     f"no axis {axis}")
                size = int(tensor.shape[axis])
                if (path, axis) == dim.at[0] and size not in self.sizes[dim.name]:
                    self.sizes[dim.name].append(size)
                if dim in self._marked:
                    torch_dynamo.mark_dynamic(tensor, axis)

    def _self_is(self, root: str) -> bool:
        """Whether `root` is the `self` of a bound method or module, which no call passes."""
        return root == "self" and (hasattr(self._fn, "__self__")
                                   or isinstance(self._fn, torch.nn.Module))

    def _resolve(self, arguments: Mapping[str, Any], path: str, dim: Dim) -> torch.Tensor:
        root = _root(path)
        if root in arguments:
            value = arguments[root]
        elif self._self_is(root):
            value = getattr(self._fn, "__self__", self._fn)
        else:
            raise ValueError(f"Dim {dim.name!r}: an input does not pass {root!r} to "
                             f"{self._name()}{self._signature}")
        for step in _PATH_STEP.finditer(path, len(root)):
            if step["attr"] is not None:
                value = getattr(value, step["attr"])
            elif step["index"] is not None:
                value = value[int(step["index"])]
            else:
                value = value[step["key"]]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"Dim {dim.name!r}: {path} is a {type(value).__name__}, not a tensor")
        return value

    def _name(self) -> str:
        return getattr(self._fn, "__name__", type(self._fn).__name__)

    def aliases(self, path: str) -> list[str]:
        """The names dynamo may give an argument path: `tokens`, or `args[1]` where dynamo
        compiled a wrapper taking *args (a function decorated with torch.no_grad, say)."""
        root = _root(path)
        rest = path[len(root):]
        names = list(self._signature.parameters)
        return [path, f"args[{names.index(root)}]{rest}"] if root in names else [path]


def _root(path: str) -> str:
    """The argument an argument path starts at: `cache` for "cache.k[0]"."""
    return re.match(r"[A-Za-z_]\w*", path)[0]


# -- what each dimension cost ------------------------------------------------------------------

def _dim_report(report: CompileReport, dims: tuple[Dim, ...], recorder: _SizeRecorder,
                graphs: list[GuardSet]) -> DimReport:
    results = []
    charged: set[str] = set()
    for dim in dims:
        places = [(alias, axis) for path, axis in dim.at for alias in recorder.aliases(path)]
        recompiles = tuple(event for event in report.recompiles if _charged(event, places))
        charged.update(event.compile_id for event in recompiles)
        states = [(graph.compile_id, _state_in(graph, places)) for graph in graphs]
        sizes = recorder.sizes[dim.name]
        results.append(DimResult(dim, tuple(sizes), recompiles,
                                 tuple((compile_id, _shown(state)) for compile_id, state in states),
                                 _verdict(sizes, states)))
    others = tuple(event for event in report.recompiles
                   if event.compile_id not in charged or event.kind == "recompile_limit")
    return DimReport(tuple(results), others, report)


def _charged(event: CompileEvent, places: list[tuple[str, int]]) -> bool:
    """Whether a size guard on one of these places failed in the recompile."""
    return any(torch_guards.names_size(f"{failure.source} {failure.expected or ''}", path, axis)
               for failure in event.failures if failure.kind == "size" for path, axis in places)


def _state_in(graph: GuardSet, places: list[tuple[str, int]]
              ) -> tuple[int | None, tuple[str, ...]] | None:
    """(static size or None for dynamic, the shape guards on it) in one graph; None if unguarded."""
    static: int | None = None
    found = False
    bounds: list[str] = []
    for path, axis in places:
        source = torch_guards.guard_source(path)
        term = f"{source}.size()[{axis}]"
        for guard in graph.guards:
            sizes = torch_guards.tensor_sizes(guard)
            if sizes and sizes[0] == source:
                found = True
                value = sizes[1][axis]
                if value != "None":
                    static = int(value)
            else:
                bound = torch_guards.size_bound(guard, term)
                if bound:
                    bounds.append(bound)
    return (static, tuple(dict.fromkeys(bounds))) if found else None


def _shown(state: tuple[int | None, tuple[str, ...]] | None) -> str:
    if state is None:
        return "not guarded"
    static, bounds = state
    if static is not None:
        return f"static {static}"
    return f"dynamic ({', '.join(bounds)})" if bounds else "dynamic"


def _verdict(sizes: Sequence[int], states: list[tuple[str, Any]]) -> str:
    known = [(compile_id, state) for compile_id, state in states if state is not None]
    if not known:
        return "not guarded in any graph"
    dynamic = [compile_id for compile_id, (static, _) in known if static is None]
    if not dynamic:
        if len(set(sizes)) > 1:
            return "static in every graph: each size compiled on its own"
        return "static"
    parts = []
    if known[0][1][0] is None:
        parts.append("dynamic from the first graph")
    else:
        parts.append(f"static in {known[0][0]}, dynamic from {dynamic[0]} (automatic dynamic)")
    small = sorted({static for _, (static, _) in known if static in (0, 1)})
    if small:
        parts.append(f"size {' and '.join(map(str, small))} specialised (0/1): a graph of its own")
    return "; ".join(parts)


def _dims_message(report: DimReport, max_other: int, msg: str | None) -> str | None:
    over = [result for result in report.dims if result.over_budget]
    other_recompiles = [e for e in report.others if e.kind == "recompile"]
    hits = report.compiles.limit_hits
    headline = [f"{r.dim.name} cost {counted(len(r.recompiles), 'recompile')}, more than its "
                f"budget of {r.dim.max_recompiles}" for r in over]
    if len(other_recompiles) > max_other:
        headline.append(f"{counted(len(other_recompiles), 'recompile')} charged to no dimension, "
                        f"more than the limit of {max_other}")
    if hits:
        headline.append(f"{len(hits)} hit torch._dynamo.config.recompile_limit and fell back to "
                        f"eager")
    if not headline:
        return None
    entries = [_dim_entry(result) for result in over]
    extra = (other_recompiles if len(other_recompiles) > max_other else []) + list(hits)
    entries += [[f"{event.function.location()}: {event.kind} {event.compile_id}, charged to no "
                 f"dimension", *failure_lines(event.failures), event.error or ""]
                for event in extra]
    hint = ("Mark a dimension that must not recompile dynamic (mark_dynamic=[...]); sizes 0 and "
            "1 always get graphs of their own, so keep them out of a dynamic dimension or "
            "budget one recompile for them.")
    return format_failure("; ".join(headline), entries, hint=hint, msg=msg)


def _dim_entry(result: DimResult) -> list[str]:
    where = ", ".join(result.dim.terms())
    lines = [f"dimension {result.dim.name} ({where}): "
             f"{counted(len(result.recompiles), 'recompile')}, budget {result.dim.max_recompiles}",
             f"sizes seen: {_sizes(result.sizes)}",
             f"how dynamo compiled it: {result.verdict}",
             "graphs: " + ", ".join(f"{compile_id} {state}" for compile_id, state in result.graphs)]
    for event in result.recompiles:
        lines.append(f"{event.kind} {event.compile_id} at {event.function.location()}:")
        lines += [f"  {line}" for line in failure_lines(event.failures)]
    return lines


# -- hypothesis --------------------------------------------------------------------------------

def dim_sizes(**dims: Any) -> Any:
    """A hypothesis strategy drawing {name: size} dicts.

        dim_sizes(batch=st.integers(1, 8), seq=st.integers(2, 256))

    Each keyword is a strategy for ints, or a fixed int.
    """
    try:
        from hypothesis import strategies as st
    except ImportError as error:
        raise ImportError("dim_sizes() needs hypothesis: pip install hypothesis") from error
    if not dims:
        raise TypeError("dim_sizes() needs at least one dimension, e.g. "
                        "dim_sizes(batch=st.integers(1, 8))")
    drawn = {}
    for name, value in dims.items():
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
            value = st.just(value)
        elif not isinstance(value, st.SearchStrategy):
            raise TypeError(f"{name} must be a hypothesis strategy or an int, got {value!r}")
        drawn[name] = value
    return st.fixed_dictionaries(drawn)


def sweep_shapes(fn: Callable, make_inputs: Callable[..., Any], sizes: Iterable[Mapping[str, int]],
                 dims: Sequence[Dim] = (), *, max_other_recompiles: int = 0,
                 mark_dynamic: Sequence[Dim | str] = (), dynamic: bool | None = None,
                 backend: Any = "eager", msg: str | None = None) -> DimReport:
    """Call `fn` on `make_inputs(**size)` for each size (drawn by `dim_sizes`), and `assert_dims`.

    make_inputs returns one call's arguments: a tuple, or a single tensor.
    """
    __tracebackhide__ = True
    if not callable(make_inputs):
        raise TypeError(f"make_inputs must be callable, got {type(make_inputs).__name__}")
    if isinstance(sizes, Mapping):
        raise TypeError("sizes must be an iterable of {name: size} dicts, got one dict; "
                        "wrap it: [sizes]")
    inputs = (make_inputs(**size) for size in sizes)
    return assert_dims(fn, inputs, dims, max_other_recompiles=max_other_recompiles,
                       mark_dynamic=mark_dynamic, dynamic=dynamic, backend=backend, msg=msg)
