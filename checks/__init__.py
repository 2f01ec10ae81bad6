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
# -- recompiles --
# -- guards --

__all__ = [
    "CheckFailure",
    "Frame",
    "GraphBreak",
    "GraphBreakReport",
    "GraphBreakError",
    "find_graph_breaks",
    "assert_no_graph_breaks",
    # -- recompiles: names --
    # -- guards: names --
]
