"""The argument checks every checker shares, made before any work, and the name a report gives
the backend it was checked with.

A checker resets dynamo and compiles; one refused for a bad argument must be refused before that,
so that the refusal costs the caller nothing, and with an error that names the argument rather
than one raised from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._compat import dynamo as torch_dynamo

__all__ = ["backend_name", "check_backend", "check_callable", "prefixed"]


def prefixed(checker: str | None, argument: str) -> str:
    """`checker: argument`, how an error names the argument of the function the user called."""
    return argument if checker is None else f"{checker}: {argument}"


def check_callable(checker: str | None, value: Any, *, argument: str = "fn") -> None:
    if not callable(value):
        raise TypeError(f"{prefixed(checker, argument)} must be callable, got {type(value).__name__}")


def check_backend(checker: str | None, backend: Any, *, argument: str = "backend") -> None:
    """A torch.compile backend: a name torch knows (ValueError listing them) or a callable.

    The message starts `<checker>: <argument> must be`, the argument as the caller spelled it.
    """
    named = prefixed(checker, argument)
    if isinstance(backend, str):
        known = torch_dynamo.backend_names()
        if backend not in known:
            raise ValueError(f"{named} must be one of {known}, got {backend!r}")
    elif not callable(backend):
        raise TypeError(f"{named} must be a backend name or a callable, "
                        f"got {type(backend).__name__}")


def backend_name(backend: str | Callable) -> str:
    """How a report names a backend check_backend accepted: its name, or the callable's."""
    return backend if isinstance(backend, str) else getattr(backend, "__name__", repr(backend))
