"""The environment block: what a reader of a report needs to reproduce it, and nothing else."""

from __future__ import annotations

import functools
import os
import platform
import site
import sysconfig
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["environment", "format_environment", "site_dirs", "installed_package", "packages_of"]


def environment() -> dict[str, str | None]:
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cuda": cuda,
        "gpu": gpu,
        "cpus": str(_cpu_count()),
    }


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def format_environment(env: dict[str, str | None] | None = None) -> str:
    env = environment() if env is None else env
    width = max(len(key) for key in env)
    return "\n".join(f"{key:<{width}}  {value if value is not None else '-'}" for key, value in env.items())


@functools.cache
def site_dirs() -> tuple[str, ...]:
    """The directories installed packages live in: the environment's and the user's."""
    found = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    found += getattr(site, "getsitepackages", list)()
    found.append(site.getusersitepackages())
    return tuple(sorted({os.path.normpath(path) for path in found}, key=len, reverse=True))


def packages_of(filenames: Iterable[str]) -> dict[str, str]:
    """{distribution: version} of the installed packages (torch aside, which the environment
    block has) that `filenames` belong to: the code a reader needs at the same version."""
    names = {name for filename in filenames if (name := installed_package(filename)) is not None}
    if not names:
        return {}
    owners = _owners()
    found = {}
    for distribution in sorted({owner for name in names for owner in owners.get(name, ())}):
        if distribution.lower() != "torch":
            found[distribution] = metadata.version(distribution)
    return found


@functools.cache
def _owners() -> dict[str, list[str]]:
    # A scan of every installed distribution (a fifth of a second): a report is saved at each
    # graph break, inside dynamo's compile.
    return metadata.packages_distributions()


def installed_package(filename: str) -> str | None:
    """The importable name ("transformers") of the installed package `filename` belongs to; None
    for a file outside the site directories."""
    path = os.path.normpath(os.path.abspath(filename))
    for directory in site_dirs():
        if path.startswith(directory + os.sep):
            return Path(path[len(directory) + 1:]).parts[0].removesuffix(".py")
    return None
