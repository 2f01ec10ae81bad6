"""Collectives as torch names them: the ops of torch.distributed, eager and functional, and the
graph breaks dynamo reports about them.

Reads op schemas' names (`c10d::allreduce_`, `_c10d_functional::all_reduce`,
`_dtensor::shard_dim_alltoall`), the same in 2.11 to 2.15, and tells a graph break about
collectives by the words dynamo's messages use for them (torch.distributed, c10d, Work,
ProcessGroup); tests/checks/test_torch_text.py holds each version's wording.

The functional collectives dynamo puts in graphs (_c10d_functional.all_reduce, ...) and the in-place
c10d ops eager torch.distributed calls (c10d.allreduce_, ...) both dispatch as ops:
hooks.observe_ops sees them as they run, and `collective_kind` names what each does.
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = [
    "COLLECTIVE_KINDS",
    "collective_kind",
    "op_name",
    "mentions_collectives",
]

_COLLECTIVE_NAMESPACES = frozenset({"_c10d_functional", "_c10d_functional_autograd", "c10d",
                                    "_dtensor"})
# Ops of those namespaces that move no data between ranks.
_NOT_COLLECTIVES = frozenset({"wait_tensor", "_wrap_tensor_autograd", "check_for_nan"})
# Op names (trailing underscore dropped) that differ from the functional collective's name.
_KIND_OF = {
    "allreduce": "all_reduce",
    "allreduce_coalesced": "all_reduce_coalesced",
    "_allgather_base": "all_gather_into_tensor",
    "allgather": "all_gather",
    "allgather_coalesced": "all_gather_coalesced",
    "allgather_into_tensor_coalesced": "all_gather_into_tensor_coalesced",
    "all_gather_into_tensor_out": "all_gather_into_tensor",
    "_reduce_scatter_base": "reduce_scatter_tensor",
    "reduce_scatter_tensor_out": "reduce_scatter_tensor",
    "alltoall_base": "all_to_all_single",
    "alltoall": "all_to_all",
    "shard_dim_alltoall": "all_to_all",
    "monitored_barrier": "barrier",
    "isend": "send",
    "irecv": "recv",
    "recv_any_source": "recv",
}
# Every kind collective_kind returns for the ops torch has today, for validating expectations.
COLLECTIVE_KINDS = frozenset({
    "all_reduce", "all_reduce_coalesced", "all_gather", "all_gather_coalesced",
    "all_gather_into_tensor", "all_gather_into_tensor_coalesced", "reduce_scatter",
    "reduce_scatter_tensor", "reduce_scatter_tensor_coalesced", "all_to_all", "all_to_all_single",
    "broadcast", "reduce", "gather", "scatter", "barrier", "send", "recv", "batch_p2p_ops",
})


def op_name(target: Any) -> str | None:
    """`c10d::allreduce_` for an op overload or packet; None for anything else."""
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.name
    return getattr(target, "_qualified_op_name", None)


@functools.cache
def _kind_of_name(name: str) -> str | None:
    namespace, _, op = name.partition("::")
    if namespace not in _COLLECTIVE_NAMESPACES or op in _NOT_COLLECTIVES:
        return None
    op = op.removesuffix("_")
    return _KIND_OF.get(op, op)


def collective_kind(target: Any) -> str | None:
    """The collective an op performs, named as torch.distributed names it ("all_reduce",
    "all_gather_into_tensor", ...), or None for an op that is not a collective."""
    name = op_name(target)
    return _kind_of_name(name) if name is not None else None


# Words of dynamo's break messages about collectives: an op of torch.distributed, a Work handle
# an async_op call returned, a ProcessGroup argument.
_COLLECTIVE_BREAK = re.compile(r"distributed|collective|c10d|\bWork\b|ProcessGroup")


def mentions_collectives(text: str) -> bool:
    """Whether a graph break's type or message is about a collective."""
    return _COLLECTIVE_BREAK.search(text) is not None
