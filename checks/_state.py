"""Leave torch's global state exactly as it was found, pass or fail.

Checkers run inside other projects' suites and under pytest-xdist: one that leaves a logging
handler, a config flag, a stance or its own compiles in torch's counters behind changes every test
after it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ._compat import dynamo as torch_dynamo
from ._compat import hooks as torch_hooks

__all__ = ["preserved_torch_state", "fresh_dynamo"]


@dataclass
class _LoggerState:
    logger: logging.Logger
    level: int
    propagate: bool
    handlers: list[logging.Handler]
    disabled: bool


def _snapshot_loggers() -> list[_LoggerState]:
    return [_LoggerState(logger, logger.level, logger.propagate, list(logger.handlers), logger.disabled)
            for logger in torch_hooks.torch_loggers()]


def _restore_loggers(before: list[_LoggerState]) -> None:
    known = {id(state.logger) for state in before}
    for state in before:
        state.logger.setLevel(state.level)
        state.logger.propagate = state.propagate
        state.logger.handlers[:] = state.handlers
        state.logger.disabled = state.disabled
    # Loggers first created during the check get no handlers of ours either.
    for logger in torch_hooks.torch_loggers():
        if id(logger) not in known:
            logger.handlers[:] = [h for h in logger.handlers if not getattr(h, "_fullgraph", False)]


@contextlib.contextmanager
def preserved_torch_state() -> Iterator[None]:
    """Snapshot dynamo config, stance and torch's logging, and restore them on exit."""
    config = torch_dynamo.dynamo_config()
    saved_config = config.get_config_copy()
    saved_stance = torch_dynamo.get_stance()
    saved_log_state = torch_hooks.get_log_state()
    saved_loggers = _snapshot_loggers()
    try:
        yield
    finally:
        _restore_loggers(saved_loggers)
        torch_hooks.set_log_state(saved_log_state)
        torch_dynamo.set_stance(saved_stance)
        _restore_config(config, saved_config)


def _restore_config(config, saved: dict) -> None:
    # Set back only what changed: writing every key would also write deprecated ones and warn.
    current = config.get_config_copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for key, value in saved.items():
            if current.get(key) != value:
                setattr(config, key, value)


@contextlib.contextmanager
def fresh_dynamo() -> Iterator[None]:
    """Reset dynamo before and after the block, and put torch's counters back as they were.

    The block compiles from scratch and leaves nothing compiled behind; its compiles leave no
    trace in torch._dynamo.utils.counters, which a user's test may assert on. The reset also
    drops the compile callbacks registered with torch._dynamo.callback (torch does that on
    every reset); they are not restored. Check arguments before entering: a refused call
    should cost the user nothing.
    """
    counters = torch_dynamo.dynamo_counters()
    saved = {key: Counter(values) for key, values in counters.items()}
    torch.compiler.reset()
    try:
        yield
    finally:
        torch.compiler.reset()
        _restore_counters(counters, saved)


def _restore_counters(counters: dict[str, Counter], saved: dict[str, Counter]) -> None:
    # In place, key by key: tests hold the dict and its Counters (`from ... import counters`).
    for key in [key for key in counters if key not in saved]:
        del counters[key]
    for key, values in saved.items():
        counters[key].clear()
        counters[key].update(values)
