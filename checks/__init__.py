"""Checkers that prove a program compiles the way it should: graph breaks, recompiles, guards.

Each check has two layers: a function that collects a frozen, printable report, and an assert_*
function or context manager that raises a CheckFailure (an AssertionError) from it.
"""

from ._message import CheckFailure, Frame

# -- graph breaks --
# -- recompiles --
# -- guards --

__all__ = [
    "CheckFailure",
    "Frame",
    # -- graph breaks: names --
    # -- recompiles: names --
    # -- guards: names --
]
