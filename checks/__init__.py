"""Checkers that prove a program compiles the way it should: graph breaks, recompiles, guards,
dimension budgets, SDPA backends, grad modes, collectives, CUDA graphs and numerical parity.

Each check has two layers: a function that collects a frozen, printable report, and an assert_*
function or context manager that raises a CheckFailure (an AssertionError) from it.
"""

from __future__ import annotations

import importlib

# Public name -> the module defining it, imported on first use: pytest imports this package
# for the plugin wherever fullgraph is installed, and that must not cost a torch import.
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
    "shapes": "shapes",
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

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
