"""The argument checks every checker shares, made before any work.

A checker resets dynamo and compiles; one refused for a bad argument must be refused before that,
so that the refusal costs the caller nothing, and with an error that names the argument rather
than one raised from deep inside torch.
"""

from __future__ import annotations

from typing import Any

from ._compat import dynamo as torch_dynamo

__all__ = ["check_backend", "prefixed"]


def prefixed(checker: str | None, argument: str) -> str:
    """`checker: argument`, how an error names the argument of the function the user called."""
    return argument if checker is None else f"{checker}: {argument}"


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
