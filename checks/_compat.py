"""Every private torch API fullgraph touches, in one place and feature-detected.

A torch upgrade that moves one of these should break this file and nothing else. Each accessor
returns a neutral value (None, an empty list) or raises `Unavailable` naming what is missing,
never an AttributeError from deep inside a checker.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = [
    "Unavailable",
    "TORCH_VERSION",
    "dynamo_config",
    "get_stance",
    "set_stance",
    "get_log_state",
    "set_log_state",
    "DYNAMO_LOGGER",
]

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])

# `torch._logging.set_logs` sets propagate=False on this logger, so handlers go here.
DYNAMO_LOGGER = "torch._dynamo"


class Unavailable(RuntimeError):
    """This torch lacks a private API a checker needs; the message names it and the version."""


def _missing(what: str) -> Unavailable:
    return Unavailable(f"{what} is not available in torch {torch.__version__}")


def dynamo_config() -> Any:
    return torch._dynamo.config


def get_stance() -> Any:
    """The current dynamo stance object (restorable with `set_stance`), or None before 2.6."""
    eval_frame = torch._dynamo.eval_frame
    return getattr(eval_frame, "_stance", None)


def set_stance(stance: Any) -> None:
    if stance is None:
        return
    setter = getattr(torch._dynamo.eval_frame, "_set_stance", None)
    if setter is None:
        raise _missing("torch._dynamo.eval_frame._set_stance")
    setter(stance)


def get_log_state() -> Any:
    """A copy of torch._logging's state (what set_logs enabled), or None if it has none."""
    internal = torch._logging._internal
    state = getattr(internal, "log_state", None)
    if state is None:
        return None
    copy = type(state)()
    copy.log_qname_to_level.update(state.log_qname_to_level)
    copy.artifact_names.update(state.artifact_names)
    return copy


def set_log_state(state: Any) -> None:
    if state is None:
        return
    internal = torch._logging._internal
    internal.log_state.log_qname_to_level.clear()
    internal.log_state.log_qname_to_level.update(state.log_qname_to_level)
    internal.log_state.artifact_names.clear()
    internal.log_state.artifact_names.update(state.artifact_names)


def torch_loggers() -> list[logging.Logger]:
    """Every logger torch has created so far (torch.* and its artifact loggers)."""
    manager = logging.Logger.manager
    return [logger for name, logger in list(manager.loggerDict.items())
            if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger)]
