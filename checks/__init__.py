"""Checkers that prove a program compiles the way it should: graph breaks, recompiles, guards,
dimension budgets, SDPA backends, grad modes, collectives, CUDA graphs and numerical parity.

Each check has two layers: a function that collects a frozen, printable report, and an assert_*
function or context manager that raises a CheckFailure (an AssertionError) from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the module defining it, imported on first use: pytest imports this package
# for the plugin wherever fullgraph is installed, and that must not cost a torch import.
# No name may be a submodule's: importing fullgraph.checks.x sets the attribute x on this
# package to the module, which then hides the export. The imports under TYPE_CHECKING say the
# same for type checkers and IDEs; tests/checks/test_package.py keeps the two in step.
_EXPORTS = {
    "CheckFailure": "_message",
    "Frame": "_message",
    "GraphBreak": "graph_breaks",
    "GraphBreakReport": "graph_breaks",
    "GraphBreakError": "graph_breaks",
    "find_graph_breaks": "graph_breaks",
    "assert_no_graph_breaks": "graph_breaks",
    "CompileEvent": "recompiles",
    "CompileReport": "recompiles",
    "GuardFailure": "recompiles",
    "RecompileBudgetError": "recompiles",
    "track_compiles": "recompiles",
    "recompile_budget": "recompiles",
    "assert_recompiles_at_most": "recompiles",
    "Dim": "shapes",
    "DimReport": "shapes",
    "dim_report": "shapes",
    "assert_dims": "shapes",
    "dim_sizes": "shapes",
    "sweep_shapes": "shapes",
    "GuardSet": "guards",
    "GuardDiff": "guards",
    "UnstableGuard": "guards",
    "UnstableGuardError": "guards",
    "guards_of": "guards",
    "diff_guards": "guards",
    "find_unstable_guards": "guards",
    "assert_no_unstable_guards": "guards",
    "SDPA_BACKENDS": "sdpa",
    "SdpaCell": "sdpa",
    "SdpaReport": "sdpa",
    "SdpaError": "sdpa",
    "sdpa_matrix": "sdpa",
    "assert_sdpa_safe": "sdpa",
    "ModeResult": "grad_modes",
    "GradModeReport": "grad_modes",
    "GradModeError": "grad_modes",
    "grad_mode_matrix": "grad_modes",
    "assert_grad_modes": "grad_modes",
    "CapturedGraph": "collectives",
    "UncapturedCollective": "collectives",
    "RankReport": "collectives",
    "CollectiveReport": "collectives",
    "CollectiveError": "collectives",
    "find_collectives": "collectives",
    "run_collective_check": "collectives",
    "assert_collectives": "collectives",
    "Recording": "cudagraphs",
    "CudaGraphSkip": "cudagraphs",
    "CudaGraphReport": "cudagraphs",
    "CudaGraphTracker": "cudagraphs",
    "CudaGraphError": "cudagraphs",
    "track_cudagraphs": "cudagraphs",
    "cudagraph_report": "cudagraphs",
    "assert_cudagraphs": "cudagraphs",
    "LOGIT_TOLERANCES": "parity",
    "ParityError": "parity",
    "logit_tolerance": "parity",
    "assert_parity": "parity",
    "exact_matmuls": "parity",
}

if TYPE_CHECKING:
    from ._message import CheckFailure, Frame
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
    from .grad_modes import (
        GradModeError,
        GradModeReport,
        ModeResult,
        assert_grad_modes,
        grad_mode_matrix,
    )
    from .graph_breaks import (
        GraphBreak,
        GraphBreakError,
        GraphBreakReport,
        assert_no_graph_breaks,
        find_graph_breaks,
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
    from .parity import LOGIT_TOLERANCES, ParityError, assert_parity, exact_matmuls, logit_tolerance
    from .recompiles import (
        CompileEvent,
        CompileReport,
        GuardFailure,
        RecompileBudgetError,
        assert_recompiles_at_most,
        recompile_budget,
        track_compiles,
    )
    from .sdpa import SDPA_BACKENDS, SdpaCell, SdpaError, SdpaReport, assert_sdpa_safe, sdpa_matrix
    from .shapes import Dim, DimReport, assert_dims, dim_report, dim_sizes, sweep_shapes

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
