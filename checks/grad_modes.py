"""One function compiled once and called in train, no_grad and inference_mode, in turn.

Grad mode is global state that dynamo guards on: the graph traced with grad enabled records
autograd and is rejected under no_grad ("GLOBAL_STATE changed: grad_mode"), and inference_mode
changes the dispatch keys of every tensor argument on top. So switching modes costs one compile
per mode, and should cost nothing more: calling each mode again must reuse its graph. A function
can also trace differently per mode (a branch on `torch.is_grad_enabled()` that breaks the graph
under no_grad only), and its gradients can differ from eager when compiled.

grad_mode_matrix calls the compiled function in every mode, twice round, and reports per mode:
the graph breaks of its compiles, how many compiles it cost and the guard that made each one,
and parity with eager: the output in every mode, and in train mode every gradient, with
.backward() called outside the compiled function (AOTAutograd compiles the backward graph).

    report = grad_mode_matrix(loss, lambda: (params, tokens))
    assert_grad_modes(loss, lambda: (params, tokens))    # raises GradModeError
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._args import backend_name, check_callable
from ._matrix import as_args, break_lines, describe, hint_for, named_tensors
from ._message import CheckFailure, check_msg, counted, format_failure, function_name
from ._state import fresh_dynamo, preserved_torch_state
from .graph_breaks import GraphBreak
from .parity import ParityError, assert_parity, exact_matmuls
from .recompiles import CompileEvent, check_compile_options, check_count, failure_lines
from .watch import watch

__all__ = ["MODES", "ModeResult", "GradModeReport", "GradModeError", "grad_mode_matrix",
           "assert_grad_modes"]

MODES = ("train", "no_grad", "inference_mode")
_CONTEXTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "train": torch.enable_grad,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}
# Every mode is called this many times in turn: the second round must compile nothing.
_ROUNDS = 2
# Gradients listed in a failure message, the rest counted.
_LISTED = 6


@dataclass(frozen=True)
class ModeResult:
    """One mode. `compiles` are the compiles its calls caused, in both rounds; `recompiled_by`
    the guards that rejected the other modes' graphs ("global state changed: grad_mode").
    max_diff compares the output with eager; grad_max_diff (train only) every gradient."""

    mode: str
    status: str  # "pass" or "fail"
    breaks: tuple[GraphBreak, ...]
    compiles: tuple[CompileEvent, ...]
    recompiled_by: tuple[str, ...]
    max_diff: float | None
    grad_max_diff: float | None = None
    problems: dict[str, str] = field(default_factory=dict)  # kind -> what went wrong
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"mode": self.mode, "status": self.status,
                "breaks": [brk.to_dict() for brk in self.breaks],
                "compiles": [event.to_dict() for event in self.compiles],
                "recompiled_by": list(self.recompiled_by), "max_diff": self.max_diff,
                "grad_max_diff": self.grad_max_diff, "problems": dict(self.problems)}


@dataclass(frozen=True)
class GradModeReport:
    function: str
    backend: str
    max_breaks: int
    max_compiles_per_mode: int
    modes: tuple[ModeResult, ...]

    @property
    def failed(self) -> tuple[ModeResult, ...]:
        return tuple(result for result in self.modes if result.status == "fail")

    def mode(self, name: str) -> ModeResult:
        return next(result for result in self.modes if result.mode == name)

    def to_dict(self) -> dict:
        return {"function": self.function, "backend": self.backend, "max_breaks": self.max_breaks,
                "max_compiles_per_mode": self.max_compiles_per_mode,
                "modes": [result.to_dict() for result in self.modes]}

    def __str__(self) -> str:
        lines = [f"grad modes of {self.function} (backend {self.backend})",
                 f"  {'mode':<16}{'result':<8}{'breaks':<8}{'compiles':<10}{'max |diff|':<12}"
                 f"{'grad max |diff|':<17}recompiled by"]
        for result in self.modes:
            diffs = [_diff(result.max_diff), _diff(result.grad_max_diff)]
            guard = "; ".join(result.recompiled_by) or "-"
            lines.append(f"  {result.mode:<16}{result.status:<8}{len(result.breaks):<8}"
                         f"{len(result.compiles):<10}{diffs[0]:<12}{diffs[1]:<17}{guard}")
            lines.extend(f"      {problem}" for problem in result.problems.values())
        return "\n".join(lines)


class GradModeError(CheckFailure):
    """A grad mode broke the graph, compiled more than allowed, or lost parity with eager."""


def grad_mode_matrix(fn: Callable, make_inputs: Callable[[], Any], *,
                     modes: Sequence[str] = MODES, backend: str | Callable = "aot_eager",
                     max_breaks: int = 0, max_compiles_per_mode: int = 1,
                     dtype: torch.dtype | None = None, atol: float | None = None,
                     rtol: float | None = None) -> GradModeReport:
    """Compile `fn` once and call it in every mode in turn, twice round; report each mode.

    make_inputs() returns fn's positional arguments (a tuple, or one tensor), made once and
    used in every call. Train mode differentiates fn's output (a scalar loss, or any tensor
    against a fixed random cotangent) with respect to every leaf tensor that requires grad in
    the inputs, and an nn.Module's parameters. max_compiles_per_mode bounds the compiles each
    mode's calls cause: 1, the one graph every mode needs, by default. dtype, atol and rtol are
    assert_parity's, for outputs and gradients (default: each tensor's dtype).
    """
    check_callable(None, fn)
    name = function_name(fn)
    modes = _check_modes(modes)
    check_compile_options("grad_mode_matrix", None, backend)
    check_count("max_breaks", max_breaks)
    check_count("max_compiles_per_mode", max_compiles_per_mode)
    if not callable(make_inputs):
        raise TypeError(f"make_inputs must be callable as make_inputs(), "
                        f"got {type(make_inputs).__name__}")
    args = as_args(make_inputs())
    leaves = _leaves(fn, args)
    if "train" in modes and not leaves:
        raise ValueError("make_inputs: train mode needs a tensor that requires grad among fn's "
                         "inputs (or an nn.Module's parameters); pass modes without 'train'")
    parity = dict(dtype=dtype, atol=atol, rtol=rtol)
    with _preserved_grad_state(leaves):
        expected = {mode: _run(fn, args, mode, leaves) for mode in modes}
        if "train" in modes and not expected["train"].output.requires_grad:
            raise ValueError("fn: its output does not require grad in train mode, so there is "
                             "nothing to differentiate; pass modes without 'train'")
        runs = _compiled_runs(fn, args, modes, leaves, backend)
    results = tuple(_result(mode, runs[mode], expected[mode], max_breaks, max_compiles_per_mode,
                            parity) for mode in modes)
    return GradModeReport(name, backend_name(backend), max_breaks, max_compiles_per_mode, results)


def assert_grad_modes(fn: Callable, make_inputs: Callable[[], Any], *, msg: str | None = None,
                      **options: Any) -> GradModeReport:
    """Raise GradModeError if any mode fails; return the report. Takes grad_mode_matrix's options."""
    __tracebackhide__ = True
    check_msg("assert_grad_modes", msg)
    report = grad_mode_matrix(fn, make_inputs, **options)
    if report.failed:
        raise GradModeError(_failure_message(report, msg), report)
    return report


# -- running -------------------------------------------------------------------------------------

@dataclass
class _Outcome:
    """What one call in one mode gave: its output and, in train mode, every leaf's gradient."""

    output: Any = None
    grads: dict[str, Tensor | None] | None = None
    error: str | None = None


@dataclass
class _CompiledRuns:
    """Every compiled call of one mode: the first call's outcome and what watch() saw."""

    first: _Outcome
    breaks: list[GraphBreak]
    compiles: list[CompileEvent]


def _run(fn: Callable, args: tuple, mode: str, leaves: list[tuple[str, Tensor]]) -> _Outcome:
    with _CONTEXTS[mode]():
        output = fn(*args)
        if mode != "train":
            return _Outcome(output)
        return _Outcome(output, _backward(output, leaves))


def _compiled_runs(fn: Callable, args: tuple, modes: tuple[str, ...],
                   leaves: list[tuple[str, Tensor]], backend: str | Callable
                   ) -> dict[str, _CompiledRuns]:
    runs: dict[str, _CompiledRuns] = {}
    with fresh_dynamo():
        compiled = torch.compile(fn, backend=backend)
        for _ in range(_ROUNDS):
            for mode in modes:
                # One watch per call: its breaks and compiles are this mode's.
                with watch() as seen:
                    try:
                        outcome = _run(compiled, args, mode, leaves)
                    except Exception as error:  # the mode's failure; the other modes still run
                        outcome = _Outcome(error=describe(error))
                if mode not in runs:
                    runs[mode] = _CompiledRuns(outcome, [], [])
                runs[mode].breaks.extend(seen.graph_breaks)
                runs[mode].compiles.extend(seen.compiles)
    return runs


def _backward(output: Any, leaves: list[tuple[str, Tensor]]) -> dict[str, Tensor | None]:
    """Every leaf's gradient of `output`, cleared from the leaves afterwards."""
    if not isinstance(output, Tensor):
        raise TypeError(f"fn must return a Tensor to be differentiated in train mode, "
                        f"got {type(output).__name__}")
    for _, leaf in leaves:
        leaf.grad = None
    if output.requires_grad:
        output.backward(None if output.numel() == 1 else _cotangent(output))
    grads = {path: None if leaf.grad is None else leaf.grad.detach().clone()
             for path, leaf in leaves}
    for _, leaf in leaves:
        leaf.grad = None
    return grads


def _cotangent(output: Tensor) -> Tensor:
    # Fixed, so eager and compiled differentiate the same function; random, so no gradient
    # cancels out as it could against ones.
    generator = torch.Generator(device=output.device).manual_seed(0)
    return torch.randn(output.shape, generator=generator, device=output.device,
                       dtype=output.dtype)


@contextlib.contextmanager
def _preserved_grad_state(leaves: list[tuple[str, Tensor]]) -> Iterator[None]:
    """torch's state, the fp32 matmul precision, and the leaves' .grad: an nn.Module's
    parameters may hold the caller's."""
    grads = [(leaf, leaf.grad) for _, leaf in leaves]
    try:
        with preserved_torch_state(), exact_matmuls():
            yield
    finally:
        for leaf, grad in grads:
            leaf.grad = grad


# -- judging -------------------------------------------------------------------------------------

def _result(mode: str, runs: _CompiledRuns, expected: _Outcome, max_breaks: int,
            max_compiles: int, parity: dict) -> ModeResult:
    breaks = tuple(brk for brk in dict.fromkeys(runs.breaks) if not brk.disabled)
    compiles = tuple(runs.compiles)
    recompiled_by = tuple(dict.fromkeys(failure.subject() for event in compiles if event.recompile
                                        for failure in event.failures))
    problems: dict[str, str] = {}
    details: list[str] = []
    if len(breaks) > max_breaks:
        problems["graph_breaks"] = f"{counted(len(breaks), 'graph break')} (limit {max_breaks})"
        details += [line for brk in breaks for line in break_lines(brk)]
    # Per function: a break (even a torch.compiler.disable'd one) compiles the rest of the
    # function as a frame of its own, in every mode.
    per_function = Counter(event.function for event in compiles)
    over = [function for function, count in per_function.items() if count > max_compiles]
    over += [event.function for event in compiles if event.kind == "recompile_limit"]
    over = list(dict.fromkeys(over))
    if over:
        counts = [f"{function.function} compiled {counted(per_function[function], 'time')}"
                  for function in over]
        problems["compiles"] = f"{'; '.join(counts)} (limit {max_compiles})"
        details += [line for event in compiles if event.function in over
                    for line in _compile_lines(event)]
    actual = runs.first
    if actual.error:
        problems["error"] = f"the compiled call raised {actual.error}"
    max_diff = grad_max_diff = None
    if not actual.error:
        max_diff, lines = _compare(dict(named_tensors("output", actual.output)),
                                   dict(named_tensors("output", expected.output)), parity)
        if lines:
            problems["output"] = "output differs from eager"
            details += lines
    if not actual.error and expected.grads is not None:
        grad_max_diff, lines = _compare(actual.grads, expected.grads, parity)
        if lines:
            problems["gradients"] = (f"gradients differ from eager: {len(lines)} of "
                                     f"{counted(len(expected.grads), 'tensor')}")
            details += lines[:_LISTED]
            if len(lines) > _LISTED:
                details.append(f"... and {len(lines) - _LISTED} more")
    return ModeResult(mode, "fail" if problems else "pass", breaks, compiles, recompiled_by,
                      max_diff, grad_max_diff, problems, tuple(details))


def _compare(actual: dict[str, Any], expected: dict[str, Any], parity: dict
             ) -> tuple[float | None, list[str]]:
    """(largest difference, one line per tensor that differs)."""
    max_diff, lines = None, []
    for path, want in expected.items():
        got = actual.get(path)
        line = None
        if want is None and got is None:
            continue
        if want is None or got is None:
            line = (f"{path}: {'no gradient' if got is None else 'a gradient'} when compiled, "
                    f"{'none' if want is None else 'one'} in eager")
        elif got.shape != want.shape:
            line = f"{path}: shape {tuple(got.shape)}, eager's {tuple(want.shape)}"
        else:
            diff = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
            max_diff = diff if max_diff is None else max(max_diff, diff)
            try:
                assert_parity(got, want, **parity)
            except ParityError as error:
                headline = str(error).splitlines()[0].removeprefix("parity failed at ")
                line = f"{path}: max |diff| {diff:.2e} at {headline}"
        if line:
            lines.append(line)
    return max_diff, lines


def _failure_message(report: GradModeReport, msg: str | None) -> str:
    headline = (f"{len(report.failed)} of {len(report.modes)} grad modes failed for "
                f"{report.function} (limits: {counted(report.max_breaks, 'graph break')}, "
                f"{counted(report.max_compiles_per_mode, 'compile')} per mode, parity with eager)")
    entries = [[f"{result.mode}: {'; '.join(result.problems.values())}", *result.details]
               for result in report.failed]
    return format_failure(headline, entries, hint_for(report.failed, _HINTS), msg)


_HINTS = {
    "graph_breaks": "A break in one mode only comes from code that asks which mode it is in "
                    "(torch.is_grad_enabled(), torch.is_inference_mode_enabled()): make both "
                    "branches traceable, or keep the check out of the compiled function.",
    "compiles": "Each mode needs one graph; more means a guard other than the mode failed "
                "(see each compile's guard), or the cache was reset between calls.",
    "output": "The compiled output differs from eager in this mode: look for code that depends "
              "on the mode or on torch.compiler.is_compiling().",
    "gradients": "A gradient differs, or exists on one side only: look for a detach, a custom "
                 "autograd.Function or torch.compiler.is_compiling() on the path to the listed "
                 "tensors.",
    "error": "The compiled call raised where eager did not: see the error.",
}


def _compile_lines(event: CompileEvent) -> list[str]:
    lines = [f"{event.kind} {event.compile_id} of {event.function.location()}"]
    lines += [f"  {line}" for line in failure_lines(event.failures)]
    return lines + ([f"  {event.error}"] if event.error else [])


# -- arguments -----------------------------------------------------------------------------------

def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modes, str) or not isinstance(modes, Sequence):
        raise TypeError(f"modes must be a sequence such as {MODES}, got {modes!r}")
    if not modes or len(set(modes)) != len(modes) or set(modes) - set(MODES):
        raise ValueError(f"modes must be distinct names from {list(MODES)}, got {list(modes)}")
    return tuple(modes)


def _leaves(fn: Callable, args: tuple) -> list[tuple[str, Tensor]]:
    """(path, tensor) of every leaf that requires grad: in the arguments, named as fn's
    signature names them, then an nn.Module's parameters."""
    found = [(path, tensor) for name, arg in zip(_argument_names(fn, len(args)), args)
             for path, tensor in named_tensors(name, arg)
             if tensor.requires_grad and tensor.is_leaf]
    if isinstance(fn, torch.nn.Module):
        found += [(f"self.{name}", param) for name, param in fn.named_parameters()
                  if param.requires_grad]
    return found


def _argument_names(fn: Callable, count: int) -> list[str]:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        parameters = []
    positional = [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [positional[i] if i < len(positional) else f"args[{i}]" for i in range(count)]


def _diff(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"
