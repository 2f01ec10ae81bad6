"""The environment block: what a reader of a report needs to reproduce it, and nothing else."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["environment", "format_environment"]


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

