"""Every SDPA backend, chosen inside and outside the compiled region, checked the same way.

`F.scaled_dot_product_attention` picks a kernel at dispatch time from global flags that
`torch.nn.attention.sdpa_kernel` sets. Under torch.compile that choice can go wrong in ways eager
never shows: a backend check written in Python breaks the graph, a fused kernel forces a recompile
per sequence length, the graph keeps the kernel it was traced with, or a kernel disagrees with the
math one. sdpa_matrix runs one function (an attention or a whole model) under every backend the
device has, with the backend chosen

    inside   by the function itself: it is called with `sdpa_backend=<name>` and enters
             sdpa_kernel in the compiled region, as the reference model's forward does;
    outside  by the caller, who wraps the compiled call in sdpa_kernel,

and reports for each pair: the graph breaks in every compile, the compiles over a sweep of
(batch, sequence) sizes with the guards behind every recompile, the kernel that ran (from profiler
events), and parity with the math backend run eagerly. A backend torch cannot run for the call
as placed (no CUDA, a dtype, a mask or grouped-query heads the kernel does not take) is
"unavailable", with torch's reason, and never a failure.

    report = sdpa_matrix(attend, make_inputs)           # make_inputs(batch, seq) -> args
    assert_sdpa_safe(attend, make_inputs)               # raises SdpaError
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._args import backend_name, check_callable
from ._compat import sdpa as torch_sdpa
from ._matrix import as_args, break_lines, describe, hint_for, tensors_in
from ._message import CheckFailure, check_msg, counted, format_failure, function_name
from ._state import fresh_dynamo, preserved_torch_state
from .graph_breaks import GraphBreak
from .parity import ParityError, assert_parity, exact_matmuls
from .recompiles import (
    CompileEvent,
    check_compile_options,
    check_count,
    failure_lines,
    over_budget,
)
from .watch import Watch, watch

__all__ = ["SDPA_BACKENDS", "PLACEMENTS", "SdpaCell", "SdpaReport", "SdpaError", "sdpa_matrix",
           "assert_sdpa_safe"]

# The names the function under test receives for the inside placement, as forward's sdpa_backend.
SDPA_BACKENDS: dict[str, SDPBackend] = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
PLACEMENTS = ("inside", "outside")
# Sizes 0 and 1 are specialised into graphs of their own; these stay clear of them.
DEFAULT_SIZES = ((2, 16), (4, 32), (3, 24))

# The compile backends whose graphs run aten's SDPA ops as such; inductor fuses them into code
# whose profiler events name no kernel.
_KERNEL_READABLE = ("eager", "aot_eager")
_CUDA_ONLY = ("efficient", "cudnn")


@dataclass(frozen=True)
class SdpaCell:
    """One backend in one placement.

    status: "pass", "fail" (`problems` says why) or "unavailable" (`reason` is torch's).
    compiles: every compile over the size sweep. kernels: the kernel ops the profiler saw in a
    warm call, and kernel_backend the backend they belong to ("mixed" for several). max_diff: the
    largest difference from the math backend's eager output over every size.
    """

    backend: str
    placement: str
    status: str
    reason: str = ""
    breaks: tuple[GraphBreak, ...] = ()
    compiles: tuple[CompileEvent, ...] = ()
    kernels: tuple[str, ...] = ()
    kernel_backend: str | None = None
    max_diff: float | None = None
    problems: dict[str, str] = field(default_factory=dict)  # kind -> what went wrong
    details: tuple[str, ...] = ()  # the lines under the problems: break sites, guards, parity

    def to_dict(self) -> dict:
        return {"backend": self.backend, "placement": self.placement, "status": self.status,
                "reason": self.reason, "breaks": [brk.to_dict() for brk in self.breaks],
                "compiles": [event.to_dict() for event in self.compiles],
                "kernels": list(self.kernels), "kernel_backend": self.kernel_backend,
                "max_diff": self.max_diff, "problems": dict(self.problems)}


@dataclass(frozen=True)
class SdpaReport:
    """Every (backend, placement) pair for one function; `failed` holds the pairs that failed."""

    function: str
    backend: str
    device: str
    sizes: tuple[tuple[int, int], ...]
    max_breaks: int
    max_recompiles: int
    cells: tuple[SdpaCell, ...]

    @property
    def failed(self) -> tuple[SdpaCell, ...]:
        return tuple(cell for cell in self.cells if cell.status == "fail")

    @property
    def unavailable(self) -> tuple[str, ...]:
        """What torch cannot run: "efficient" where no placement can, "efficient outside" where
        one placement cannot."""
        names = []
        for backend in dict.fromkeys(cell.backend for cell in self.cells):
            cells = [cell for cell in self.cells if cell.backend == backend]
            missing = [cell.placement for cell in cells if cell.status == "unavailable"]
            names += [backend] if len(missing) == len(cells) else [f"{backend} {p}" for p in missing]
        return tuple(names)

    def cell(self, backend: str, placement: str) -> SdpaCell:
        return next(c for c in self.cells if (c.backend, c.placement) == (backend, placement))

    def to_dict(self) -> dict:
        return {"function": self.function, "backend": self.backend, "device": self.device,
                "sizes": [list(size) for size in self.sizes], "max_breaks": self.max_breaks,
                "max_recompiles": self.max_recompiles,
                "cells": [cell.to_dict() for cell in self.cells]}

    def __str__(self) -> str:
        sizes = ", ".join(f"{batch}x{seq}" for batch, seq in self.sizes)
        lines = [f"SDPA backends for {self.function} (backend {self.backend}, {self.device}, "
                 f"batch x seq {sizes})",
                 f"  {'sdpa':<10}{'placement':<10}{'result':<13}{'breaks':<8}{'compiles':<10}"
                 f"{'max |diff|':<12}kernel"]
        listed = set()
        for cell in self.cells:
            if cell.status == "unavailable":
                if cell.backend in self.unavailable and cell.backend in listed:
                    continue  # one row for a backend no placement can run
                placement = "-" if cell.backend in self.unavailable else cell.placement
                lines.append(f"  {cell.backend:<10}{placement:<10}{'unavailable':<13}{cell.reason}")
                listed.add(cell.backend)
                continue
            diff = "-" if cell.max_diff is None else f"{cell.max_diff:.1e}"
            kernel = ", ".join(cell.kernels) or "-"
            lines.append(f"  {cell.backend:<10}{cell.placement:<10}{cell.status:<13}"
                         f"{len(cell.breaks):<8}{len(cell.compiles):<10}{diff:<12}{kernel}")
            lines.extend(f"      {problem}" for problem in cell.problems.values())
        return "\n".join(lines)


class SdpaError(CheckFailure):
    """A backend/placement pair broke the graph, recompiled, ran another kernel or lost parity."""


def sdpa_matrix(fn: Callable, make_inputs: Callable[[int, int], Any], *,
                backends: Sequence[str] | None = None, placements: Sequence[str] = PLACEMENTS,
                sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                backend: str | Callable = "aot_eager", dynamic: bool | None = None,
                max_breaks: int = 0, max_recompiles: int | None = None,
                keyword: str = "sdpa_backend", dtype: torch.dtype | None = None,
                atol: float | None = None, rtol: float | None = None) -> SdpaReport:
    """Check `fn` under every SDPA backend (default: all four) in every placement.

    make_inputs(batch, seq) returns fn's positional arguments (a tuple, or one tensor), made
    once per size. For the inside placement fn is called with `keyword=<backend name>`
    ("math", "flash", "efficient", "cudnn"), and for the outside one without it.
    backend and dynamic are torch.compile's; max_recompiles bounds each compiled function's
    recompiles over the sweep, by default what the compile mode costs when nothing goes wrong
    (dynamic=None: one per dimension that changes; True: none; False: one per new size).
    dtype, atol and rtol are assert_parity's, for the parity with the math backend.
    """
    check_callable(None, fn)
    name = function_name(fn)
    backends = _check_backends(backends)
    placements = _check_placements(placements, fn, keyword)
    sizes = _check_sizes(sizes)
    check_compile_options("sdpa_matrix", dynamic, backend)
    check_count("max_breaks", max_breaks)
    if max_recompiles is None:
        max_recompiles = _expected_recompiles(sizes, dynamic)
    check_count("max_recompiles", max_recompiles)
    if not callable(make_inputs):
        raise TypeError(f"make_inputs must be callable as make_inputs(batch, seq), "
                        f"got {type(make_inputs).__name__}")
    inputs = [as_args(make_inputs(batch, seq)) for batch, seq in sizes]
    run = _Run(fn, keyword, sizes, inputs, backend, dynamic, max_breaks, max_recompiles,
               dict(dtype=dtype, atol=atol, rtol=rtol))
    with _preserved_sdpa_state():
        references = run.math_outputs()
        cells = []
        for sdpa in backends:
            for placement in placements:
                reason = run.unavailable_reason(sdpa, placement)
                cells.append(SdpaCell(sdpa, placement, "unavailable", reason) if reason
                             else run.cell(sdpa, placement, references))
    return SdpaReport(name, backend_name(backend), _device_of(inputs[0]), sizes, max_breaks,
                      max_recompiles, tuple(cells))


def assert_sdpa_safe(fn: Callable, make_inputs: Callable[[int, int], Any], *,
                     msg: str | None = None, **options: Any) -> SdpaReport:
    """Raise SdpaError if any available backend/placement pair fails; return the report.

    Takes sdpa_matrix's options. Unavailable backends are listed in the report, not failed.
    """
    __tracebackhide__ = True
    check_msg("assert_sdpa_safe", msg)
    report = sdpa_matrix(fn, make_inputs, **options)
    if report.failed:
        raise SdpaError(_failure_message(report, msg), report)
    return report


# -- running one cell ----------------------------------------------------------------------------

@dataclass
class _Run:
    fn: Callable
    keyword: str
    sizes: tuple[tuple[int, int], ...]
    inputs: list[tuple]
    backend: str | Callable
    dynamic: bool | None
    max_breaks: int
    max_recompiles: int
    parity: dict

    def math_outputs(self) -> list[Any]:
        """The math backend's eager output for every size, chosen both ways at once."""
        chosen = {self.keyword: "math"} if _accepts(self.fn, self.keyword) else {}
        with sdpa_kernel([SDPBackend.MATH]):
            return [self.fn(*args, **chosen) for args in self.inputs]

    def unavailable_reason(self, sdpa: str, placement: str) -> str:
        """Torch's words for why `sdpa` cannot run the first input here, placed so, or "" if it
        can. Run eagerly: a kernel that cannot run there cannot run compiled either."""
        kwargs, outside = self._placed(sdpa, placement)
        with outside, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.fn(*self.inputs[0], **kwargs)
            except RuntimeError as error:
                if not torch_sdpa.is_no_kernel_error(error):
                    raise
                said = [str(error).strip().splitlines()[0]]
                said += [torch_sdpa.without_torch_source(str(warning.message))
                         for warning in caught]
                device = _device_of(self.inputs[0])
                if sdpa in _CUDA_ONLY and not device.startswith("cuda"):
                    said.insert(0, f"{sdpa} runs on CUDA only, the inputs are on {device}")
                return "; ".join(dict.fromkeys(said))
        return ""

    def _placed(self, sdpa: str, placement: str
                ) -> tuple[dict[str, str], contextlib.AbstractContextManager]:
        """fn's keyword arguments and the context around the call, for one placement."""
        if placement == "inside":
            return {self.keyword: sdpa}, contextlib.nullcontext()
        return {}, sdpa_kernel([SDPA_BACKENDS[sdpa]])

    def cell(self, sdpa: str, placement: str, references: list[Any]) -> SdpaCell:
        kwargs, outside = self._placed(sdpa, placement)
        with outside:
            outputs, seen, kernels, error = self._sweep(kwargs)
        breaks = tuple(brk for brk in seen.graph_breaks if not brk.disabled)
        problems: dict[str, str] = {}
        details: list[str] = []
        if len(breaks) > self.max_breaks:
            problems["graph_breaks"] = (f"{counted(len(breaks), 'graph break')} "
                                        f"(limit {self.max_breaks})")
            details += [line for brk in breaks for line in break_lines(brk)]
        offenders = over_budget(seen.compiles, self.max_recompiles, per_function=True)
        if offenders:
            problems["recompiles"] = (f"{counted(len(seen.recompiles), 'recompile')} over "
                                      f"{counted(len(self.inputs), 'size')} "
                                      f"(limit {self.max_recompiles})")
            details += [line for event, _ in offenders for line in _recompile_lines(event)]
        if error:
            problems["error"] = f"the compiled call raised {error}"
        ran = _kernel_backend(kernels)
        if not error and backend_name(self.backend) in _KERNEL_READABLE and ran != sdpa:
            problems["kernel"] = f"ran {', '.join(kernels) or 'no SDPA kernel'}, not {sdpa}"
        max_diff, parity = _parity(outputs, references, self.sizes, self.parity)
        if parity:
            problems["parity"] = "differs from the math backend"
            details += parity
        return SdpaCell(sdpa, placement, "fail" if problems else "pass", breaks=breaks,
                        compiles=seen.compiles, kernels=kernels, kernel_backend=ran,
                        max_diff=max_diff, problems=problems, details=tuple(details))

    def _sweep(self, kwargs: dict) -> tuple[list[Any], Watch, tuple[str, ...], str | None]:
        """Compile fn afresh and call it on every size, then once more, warm, under the profiler.

        watch() sees the breaks of every compile, not just the first: a break that appears only
        once a dimension turns dynamic shows on the second size.
        """
        outputs: list[Any] = []
        kernels: tuple[str, ...] = ()
        error = None
        with fresh_dynamo():
            compiled = torch.compile(self.fn, backend=self.backend, dynamic=self.dynamic)
            with watch() as seen:
                try:
                    outputs = [compiled(*args, **kwargs) for args in self.inputs]
                    kernels = _kernels_of(lambda: compiled(*self.inputs[0], **kwargs))
                except Exception as exc:  # the cell's failure, reported with what it saw so far
                    error = describe(exc)
        return outputs, seen, kernels, error


def _kernels_of(call: Callable[[], Any]) -> tuple[str, ...]:
    """The SDPA kernel ops the profiler records during one call."""
    return tuple(sorted(name for name in torch_sdpa.profiled_op_names(call)
                        if torch_sdpa.kernel_backend(name) is not None))


def _kernel_backend(kernels: tuple[str, ...]) -> str | None:
    """The backend the kernels belong to, "mixed" for several, None for none."""
    found = {torch_sdpa.kernel_backend(name) for name in kernels} - {None}
    if len(found) > 1:
        return "mixed"
    return found.pop() if found else None


def _parity(outputs: list[Any], references: list[Any], sizes: tuple[tuple[int, int], ...],
            options: dict) -> tuple[float | None, list[str]]:
    """(largest difference over every size, the first failure's lines or [])."""
    max_diff = None
    for actual, expected, (batch, seq) in zip(outputs, references, sizes):
        for got, want in zip(tensors_in(actual), tensors_in(expected)):
            at = f"at batch x seq {batch}x{seq}"
            if got.shape != want.shape:
                return max_diff, [f"{at}: shape {tuple(got.shape)}, "
                                  f"the math backend's {tuple(want.shape)}"]
            diff = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
            max_diff = diff if max_diff is None else max(max_diff, diff)
            try:
                assert_parity(got, want, **options)
            except ParityError as error:
                # assert_close's own lines, less its "Tensor-likes are not close!" opening.
                headline, _, rest = str(error).partition("\n")
                details = [line.strip() for line in rest.splitlines()[1:] if line.strip()]
                return max_diff, [f"{at}: {headline}", *details[:3]]
    return max_diff, []


@contextlib.contextmanager
def _preserved_sdpa_state() -> Iterator[None]:
    """torch's state, the fp32 matmul precision, and the SDPA flags, which a function under test
    may switch (torch.backends.cuda.enable_flash_sdp compiles without a break)."""
    cuda = torch.backends.cuda
    flags = [(cuda.enable_flash_sdp, cuda.flash_sdp_enabled()),
             (cuda.enable_mem_efficient_sdp, cuda.mem_efficient_sdp_enabled()),
             (cuda.enable_math_sdp, cuda.math_sdp_enabled()),
             (cuda.enable_cudnn_sdp, cuda.cudnn_sdp_enabled()),
             (cuda.allow_fp16_bf16_reduction_math_sdp, cuda.fp16_bf16_reduction_math_sdp_allowed())]
    try:
        with preserved_torch_state(), exact_matmuls():
            yield
    finally:
        for setter, value in flags:
            setter(value)


# -- the failure message -------------------------------------------------------------------------

def _failure_message(report: SdpaReport, msg: str | None) -> str:
    ran = [cell for cell in report.cells if cell.status != "unavailable"]
    headline = (f"{len(report.failed)} of {len(ran)} SDPA backend/placement pairs failed for "
                f"{report.function} (limits: {counted(report.max_breaks, 'graph break')}, "
                f"{counted(report.max_recompiles, 'recompile')} over {len(report.sizes)} sizes, "
                f"parity with math)")
    if report.unavailable:
        headline += f"; unavailable here: {', '.join(report.unavailable)}"
    entries = [[f"{cell.backend} {cell.placement}: {'; '.join(cell.problems.values())}",
                *cell.details] for cell in report.failed]
    return format_failure(headline, entries, hint_for(report.failed, _HINTS), msg)


_HINTS = {
    "graph_breaks": "Fix the breaks in order, as one can cause the next. Choose the kernel with "
                    "sdpa_kernel([...]) and nothing else: a Python check of the SDPA flags or of "
                    "tensor values breaks the graph.",
    "recompiles": "A recompile per size: keep sizes out of Python control flow around the "
                  "attention, or mark the sequence dimension dynamic.",
    "kernel": "The backend asked for is not the one that ran: pass the backend through to "
              "sdpa_kernel around F.scaled_dot_product_attention.",
    "parity": "Compare the arguments each backend gets (scale, mask, is_causal): the kernels "
              "agree to within the dtype's tolerance when called alike.",
    "error": "The compiled call raised where eager did not: see the error.",
}


def _recompile_lines(event: CompileEvent) -> list[str]:
    return [f"recompile {event.compile_id} of {event.function.location()}:",
            *(f"  {line}" for line in failure_lines(event.failures))]


# -- arguments -----------------------------------------------------------------------------------

def _check_backends(backends: Sequence[str] | None) -> tuple[str, ...]:
    if backends is None:
        return tuple(SDPA_BACKENDS)
    if isinstance(backends, str) or not isinstance(backends, Sequence):
        raise TypeError(f"backends must be a sequence of names such as ('math', 'flash'), "
                        f"got {backends!r}")
    unknown = [name for name in backends if name not in SDPA_BACKENDS]
    if unknown or not backends or len(set(backends)) != len(backends):
        raise ValueError(f"backends must be distinct names from {list(SDPA_BACKENDS)}, "
                         f"got {list(backends)}")
    return tuple(backends)


def _check_placements(placements: Sequence[str], fn: Callable, keyword: str) -> tuple[str, ...]:
    if isinstance(placements, str) or not isinstance(placements, Sequence):
        raise TypeError(f"placements must be a sequence such as ('inside', 'outside'), "
                        f"got {placements!r}")
    if (not placements or len(set(placements)) != len(placements)
            or set(placements) - set(PLACEMENTS)):
        raise ValueError(f"placements must be distinct names from {list(PLACEMENTS)}, "
                         f"got {list(placements)}")
    if not isinstance(keyword, str) or not keyword.isidentifier():
        raise TypeError(f"keyword must be a parameter name, got {keyword!r}")
    if "inside" in placements and not _accepts(fn, keyword):
        raise ValueError(f"fn: {function_name(fn)} takes no {keyword}= argument, so it cannot "
                         f"choose the backend inside; add one, or pass placements=('outside',)")
    return tuple(placements)


def _check_sizes(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    if isinstance(sizes, str) or not isinstance(sizes, Sequence) or not sizes:
        raise TypeError(f"sizes must be a non-empty sequence of (batch, seq) pairs, got {sizes!r}")
    for size in sizes:
        if (not isinstance(size, tuple) or len(size) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in size)):
            raise ValueError(f"sizes: each must be a (batch, seq) pair of ints >= 1, got {size!r}")
    return tuple(sizes)


def _expected_recompiles(sizes: tuple[tuple[int, int], ...], dynamic: bool | None) -> int:
    """What a sweep costs when nothing goes wrong: automatic dynamic recompiles once for each
    dimension that changes, dynamic=True never, dynamic=False once per new size."""
    if dynamic is True:
        return 0
    if dynamic is False:
        return len(set(sizes)) - 1
    return sum(len({size[axis] for size in sizes}) > 1 for axis in (0, 1))


def _accepts(fn: Callable, keyword: str) -> bool:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == keyword and p.kind is not p.POSITIONAL_ONLY or p.kind is p.VAR_KEYWORD
               for p in parameters)


def _device_of(args: tuple) -> str:
    tensor = next(iter(tensors_in(list(args))), None)
    return str(tensor.device) if tensor is not None else "cpu"
