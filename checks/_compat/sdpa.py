"""SDPA as ATen runs it: the kernel ops the profiler names, ATen's words for a kernel that cannot
run, and a profiler that does not print into the caller's output.

Reads profiler event names (`aten::_scaled_dot_product_flash_attention_for_cpu`, ...), ATen's
errors "No available kernel.  Aborting execution." (CUDA) and "No viable backend for
scaled_dot_product_attention was found." (CPU), the "(Triggered internally at ...)" tail of its
warnings, and kineto's log lines, the same in torch 2.11 to 2.15; tests/checks/test_torch_text.py
holds each.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "kernel_backend",
    "profiled_op_names",
    "quiet_profiler",
    "is_no_kernel_error",
    "without_torch_source",
]

# The aten ops that name a kernel in profiler events, by backend. Each fused backend's op names
# contain these (flash on CPU is _scaled_dot_product_flash_attention_for_cpu). Math runs as
# _scaled_dot_product_attention_math in eager; AOTAutograd decomposes it, and of it only
# _safe_softmax, which nothing but SDPA's math path calls, is left to recognise it by.
_KERNEL_OPS = {
    "flash": ("aten::_scaled_dot_product_flash_attention", "aten::_flash_attention_forward"),
    "efficient": ("aten::_scaled_dot_product_efficient_attention",
                  "aten::_efficient_attention_forward"),
    "cudnn": ("aten::_scaled_dot_product_cudnn_attention", "aten::_cudnn_attention_forward"),
    "math": ("aten::_scaled_dot_product_attention_math", "aten::_safe_softmax"),
}
# What torch raises when no allowed kernel can run the call: CUDA, then CPU.
_NO_KERNEL = ("No available kernel", "No viable backend")
# Where in ATen a warning came from: "(Triggered internally at .../sdp_utils.cpp:986.)".
_TORCH_SOURCE = re.compile(r"\s*\(Triggered internally at [^)]*\)")
# Kineto (the profiler's backend) writes a line to fd 2 whenever a profile starts or stops, from
# C++ and whatever KINETO_LOG_LEVEL says: "USDT:2026-11-26 13:31:53 32761:32761
# SyncActivityProfilerHandler.cpp:52] profiler_start".
_KINETO_LINE = re.compile(rb"^(USDT|STAGE):\d{4}-\d\d-\d\d [^\]]*\] ")


def kernel_backend(op_name: str) -> str | None:
    """The SDPA backend ("flash", "efficient", "cudnn", "math") whose kernel a profiler event
    names, or None for any other op."""
    return next((sdpa for sdpa, ops in _KERNEL_OPS.items()
                 if any(op_name.startswith(op) for op in ops)), None)


def profiled_op_names(call: Callable[[], Any]) -> set[str]:
    """The names of the CPU-side events the profiler records during one call."""
    with warnings.catch_warnings():
        # torch 2.11 warns that one profiling cycle keeps its own events only: all this needs.
        warnings.filterwarnings("ignore", "Warning: Profiler clears events", UserWarning)
        with quiet_profiler(), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            call()
    return {event.name for event in profiler.events()}


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Hold back what reaches fd 2 in the block, then write it back without kineto's lines.

    Nothing else is lost, only delayed until the block ends: a checker's profile should not print
    into the table `fullgraph check` is drawing.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not _KINETO_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def is_no_kernel_error(error: BaseException) -> bool:
    """Whether SDPA raised because no allowed kernel can run the call."""
    return any(text in str(error) for text in _NO_KERNEL)


def without_torch_source(message: str) -> str:
    """An ATen warning without its "(Triggered internally at file:line.)" tail."""
    return _TORCH_SOURCE.sub("", message).strip()
