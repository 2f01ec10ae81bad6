"""The one boundary between the checkers and torch's private APIs and message text.

Every private torch name the checkers use, and every regular expression over what torch prints,
lives in a module of this package, one per torch subsystem, feature-detected: a torch upgrade that
moves or rewords one of them breaks one module here and nothing else (tests/test_boundary.py fails
on a private torch name anywhere else). Each accessor returns a neutral value (None, an empty
list) or raises `Unavailable` naming what is missing, never an AttributeError from deep inside a
checker.

    hooks           patches of dynamo's graph-break recording and torch's counters, op
                    dispatch, autograd, torch's loggers and logging state
    dynamo          config, stance, reset, counters, compilation metrics, compile ids, cache
                    entries, backends, mark_dynamic
    breaks          graph-break messages, the registry of break types, resume functions
    guards          guard code of cache entries
    guard_failures  guard-failure reasons and the recompile-limit warning
    cudagraphs      cudagraph trees, their memory pool, inductor's skip messages
    distributed     collective ops, graph breaks about collectives
    sdpa            SDPA kernel ops in the profiler, ATen's words for a kernel that cannot run,
                    kineto's lines kept out of the output

Callers import the module they need: `from ._compat import guards as torch_guards`.
"""

from __future__ import annotations

import os

import torch

__all__ = ["Unavailable", "TORCH_VERSION", "TORCH_DIR", "is_torch_file", "missing"]

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# Frames in torch's own files are dynamo's machinery (nn.Module.__call__, polyfills), not user code.
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def is_torch_file(path: str) -> bool:
    """Whether `path` is in torch's install (not merely beside it, as torchvision is)."""
    return os.path.abspath(path).startswith(TORCH_DIR + os.sep)


class Unavailable(RuntimeError):
    """This torch lacks a private API a checker needs; the message names it and the version."""


def missing(what: str) -> Unavailable:
    """The error for a private API this torch does not have."""
    return Unavailable(f"{what} is not available in torch {torch.__version__}")
