"""Run a program the way `python` would, for `fullgraph report`.

A TARGET is `script.py [args...]` (run as __main__, like `python script.py`), `-m module [args...]`
(like `python -m module`) or `module:function` (imported, then called with no arguments). Loading
checks everything that can be checked before the program starts, so a mistake on the command line
is an error naming TARGET, and nothing the program does later is.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import runpy
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ._frames import CHECKS_DIR
from ._message import display_path

__all__ = ["CALLABLE", "TargetError", "Target", "Outcome", "load_target", "run_target"]

# "module:function" (`fullgraph report`'s third TARGET form, run_collective_check's target).
CALLABLE = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<attribute>[A-Za-z_][\w.]*)")


class TargetError(ValueError):
    """TARGET cannot be run: the message says why, naming it."""


@dataclass(frozen=True)
class Target:
    """A loaded program: `run()` runs it once; `label` names it in a report's title."""

    label: str
    run: Callable[[], object]


@dataclass(frozen=True)
class Outcome:
    """How a program ended: status "ok", "exception" or "exit N", and the exit code to pass on."""

    status: str
    exception: str | None
    code: int


def load_target(argv: list[str]) -> Target:
    """The program `argv` names (a leading `--` is dropped), checked but not started."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise TargetError("TARGET is missing: give `script.py [args]`, `-m module [args]` or "
                          "`module:function` after --")
    first, args = argv[0], argv[1:]
    if first == "-m":
        if not args:
            raise TargetError("TARGET: -m needs a module name")
        return _module(args[0], args[1:])
    if not first.endswith(".py") and CALLABLE.fullmatch(first):
        if args:
            raise TargetError(f"TARGET: {first} is called with no arguments, got {args}")
        return _callable(first)
    return _script(first, args)


def _script(path: str, args: list[str]) -> Target:
    if not os.path.isfile(path):
        raise TargetError(f"TARGET: no such file: {path!r}")

    def run() -> None:
        # `python script.py` puts the script's directory first on sys.path.
        with _as_main([path, *args], os.path.dirname(os.path.abspath(path))):
            runpy.run_path(path, run_name="__main__")

    return Target(display_path(path), run)


def _module(name: str, args: list[str]) -> Target:
    with _on_path(os.getcwd()):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent package that is missing or not a package
            found = None
    if found is None:
        raise TargetError(f"TARGET: no module named {name!r}")

    def run() -> None:
        with _as_main([name, *args], os.getcwd()):
            runpy.run_module(name, run_name="__main__", alter_sys=True)

    return Target(f"-m {name}", run)


def _callable(spec: str) -> Target:
    match = CALLABLE.fullmatch(spec)
    with _on_path(os.getcwd()):
        try:
            module = importlib.import_module(match["module"])
        except Exception as error:  # whatever the import raised, TARGET cannot be imported
            raise TargetError(f"TARGET: cannot import {match['module']!r} for {spec!r}: "
                              f"{type(error).__name__}: {error}") from error
    found: object = module
    for part in match["attribute"].split("."):
        if not hasattr(found, part):
            raise TargetError(f"TARGET: {match['module']!r} has no attribute {match['attribute']!r}")
        found = getattr(found, part)
    if not callable(found):
        raise TargetError(f"TARGET: {spec} is not callable, it is a {type(found).__name__}")

    def run() -> None:
        with _on_path(os.getcwd()):
            found()

    return Target(spec, run)


@contextlib.contextmanager
def _on_path(directory: str) -> Iterator[None]:
    """`directory` first on sys.path while inside, as `python -m` has the current directory."""
    saved = sys.path[:]
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path[:] = saved


@contextlib.contextmanager
def _as_main(argv: list[str], directory: str) -> Iterator[None]:
    saved = sys.argv[:]
    sys.argv[:] = argv
    try:
        with _on_path(directory):
            yield
    finally:
        sys.argv[:] = saved


def run_target(target: Target) -> Outcome:
    """Run the program once and say how it ended, as the exit code `python` would give.

    An exception's traceback is printed to stderr, as python prints it.
    """
    try:
        target.run()
    except SystemExit as stop:
        return _exit_outcome(stop)
    except KeyboardInterrupt:
        return Outcome("exception", "KeyboardInterrupt", 130)
    except Exception as error:  # the program's own failure: reported, and its exit code passed on
        traceback.print_exception(type(error), error, _user_traceback(error.__traceback__))
        return Outcome("exception", f"{type(error).__name__}: {error}", 1)
    return Outcome("ok", None, 0)


def _exit_outcome(stop: SystemExit) -> Outcome:
    code = stop.code
    if code is None or code == 0:
        return Outcome("ok", None, 0)
    if isinstance(code, int):
        return Outcome(f"exit {code}", None, code)
    # sys.exit("message") prints the message and exits with 1.
    print(code, file=sys.stderr)
    return Outcome("exit 1", f"SystemExit: {code}", 1)


def _user_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback without the frames of this module and runpy above the program's own."""
    while tb is not None and _is_runner_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _is_runner_frame(filename: str) -> bool:
    # runpy's code may be frozen: its filename is then "<frozen runpy>", not runpy.__file__.
    return (filename == runpy.run_path.__code__.co_filename
            or os.path.abspath(filename).startswith(CHECKS_DIR + os.sep))
