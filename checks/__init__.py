"""Checkers that prove a program compiles the way it should: graph breaks, recompiles, guards.

Each check has two layers: a function that collects a frozen, printable report, and an assert_*
function or context manager that raises a CheckFailure (an AssertionError) from it.
"""

from ._message import CheckFailure, Frame

from .graph_breaks import (
    GraphBreak,
    GraphBreakError,
    GraphBreakReport,
    assert_no_graph_breaks,
    find_graph_breaks,
)
from .cudagraphs import (
    CudaGraphError,
    CudaGraphReport,
    CudaGraphSkip,
    CudaGraphTracker,
    Recording,
    assert_cudagraphs,
    cudagraph_report,
    track_cudagraphs,
)
from .recompiles import (
    CompileEvent,
    CompileReport,
    GuardFailure,
    RecompileBudgetError,
    assert_recompiles_at_most,
    recompile_budget,
    track_compiles,
)
from .shapes import Dim, DimReport, assert_dims, dim_report, shapes, sweep_shapes
from .collectives import (
    CapturedGraph,
    CollectiveError,
    CollectiveReport,
    RankReport,
    UncapturedCollective,
    assert_collectives,
    find_collectives,
    run_collective_check,
)
from .guards import (
    GuardDiff,
    GuardSet,
    UnstableGuard,
    UnstableGuardError,
    assert_no_unstable_guards,
    diff_guards,
    find_unstable_guards,
    guards_of,
)
from .sdpa import SDPA_BACKENDS, SdpaCell, SdpaError, SdpaReport, assert_sdpa_safe, sdpa_matrix
from .grad_modes import GradModeError, GradModeReport, ModeResult, assert_grad_modes, grad_mode_matrix

__all__ = [
    "CheckFailure",
    "Frame",
    "GraphBreak",
    "GraphBreakReport",
    "GraphBreakError",
    "find_graph_breaks",
    "assert_no_graph_breaks",
    "CompileEvent",
    "CompileReport",
    "GuardFailure",
    "RecompileBudgetError",
    "track_compiles",
    "recompile_budget",
    "assert_recompiles_at_most",
    "Dim",
    "DimReport",
    "dim_report",
    "assert_dims",
    "shapes",
    "sweep_shapes",
    "GuardSet",
    "GuardDiff",
    "UnstableGuard",
    "UnstableGuardError",
    "guards_of",
    "diff_guards",
    "find_unstable_guards",
    "assert_no_unstable_guards",
    "SDPA_BACKENDS",
    "SdpaCell",
    "SdpaReport",
    "SdpaError",
    "sdpa_matrix",
    "assert_sdpa_safe",
    "ModeResult",
    "GradModeReport",
    "GradModeError",
    "grad_mode_matrix",
    "assert_grad_modes",
    "CapturedGraph",
    "UncapturedCollective",
    "RankReport",
    "CollectiveReport",
    "CollectiveError",
    "find_collectives",
    "run_collective_check",
    "assert_collectives",
    "Recording",
    "CudaGraphSkip",
    "CudaGraphReport",
    "CudaGraphTracker",
    "CudaGraphError",
    "track_cudagraphs",
    "cudagraph_report",
    "assert_cudagraphs",
]
