"""The private torch names the model uses, in one place.

model/ never imports checks/, so it keeps its own small boundary: the rest of model/ reads as if
these were public, and a torch release that moves one breaks this file only
(tests/test_boundary.py keeps it so). Every name here exists, with the same meaning, in torch 2.11
to 2.15; none has a public equivalent there.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed._functional_collectives as funcol

__all__ = [
    "functional_all_reduce",
    "mark_static",
    "mark_static_address",
    "coordinate_descent_tuning",
    "fake_store",
    "convert_weight_to_int4pack",
    "convert_weight_to_int4pack_for_cpu",
    "weight_int4pack_mm",
    "weight_int4pack_mm_for_cpu",
]

# The all-reduce dynamo traces into the graph (torch.distributed.all_reduce is in place and, with
# async_op=True, breaks the graph): all_reduce(x, "sum", group) -> a new tensor.
functional_all_reduce = funcol.all_reduce

# tinygemm's int4 weight-only matmul: ATen's packed layout and its kernels, CUDA and CPU.
convert_weight_to_int4pack = torch.ops.aten._convert_weight_to_int4pack
convert_weight_to_int4pack_for_cpu = torch.ops.aten._convert_weight_to_int4pack_for_cpu
weight_int4pack_mm = torch.ops.aten._weight_int4pack_mm
weight_int4pack_mm_for_cpu = torch.ops.aten._weight_int4pack_mm_for_cpu


def mark_static(tensor: torch.Tensor) -> None:
    """Tell dynamo every size of `tensor` is fixed, so no recompile makes it a symbol."""
    torch._dynamo.mark_static(tensor)


def mark_static_address(tensor: torch.Tensor) -> None:
    """Tell CUDA graphs `tensor` keeps its storage between calls: no copy before each replay."""
    torch._dynamo.mark_static_address(tensor)


def coordinate_descent_tuning() -> contextlib.AbstractContextManager:
    """Inductor's coordinate-descent kernel tuning on while inside, its config put back after."""
    import torch._inductor.config

    return torch._inductor.config.patch(coordinate_descent_tuning=True)


def fake_store() -> torch.distributed.Store:
    """The store of torch's "fake" process-group backend; importing it registers the backend."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    return FakeStore()
