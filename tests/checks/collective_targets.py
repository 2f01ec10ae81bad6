"""Targets for run_collective_check: each rank calls one with no arguments once its process group
is up, and gets back the function to check and its arguments.

Imported by the ranks run_collective_check starts (they get the test process's sys.path) and by
test_collectives.py, which reads the line numbers of the marked lines.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from fullgraph.model import LlamaConfig, forward, init_params
from fullgraph.model.tensor_parallel import make_all_reduce, shard_params

TINY = LlamaConfig.from_name("tiny")
# torch 2.13 renamed funcol's all_gather_tensor and reduce_scatter_tensor to these, deprecating the
# old names; older torch has only the old ones.
all_gather_single = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
reduce_scatter_single = getattr(funcol, "reduce_scatter_single", None) or funcol.reduce_scatter_tensor


def tp_forward(device: str = "cpu"):
    """The reference model's tensor-parallel forward on this rank's shard."""
    shard = shard_params(init_params(TINY, seed=0, device=device), TINY,
                         world_size=dist.get_world_size(), rank=dist.get_rank())
    tokens = torch.randint(TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    return forward, (shard, tokens.to(device)), {"cfg": TINY, "all_reduce": make_all_reduce()}


def tp_forward_cuda():
    """tp_forward on this rank's GPU (run_collective_check sets it under NCCL)."""
    return tp_forward(device=f"cuda:{torch.cuda.current_device()}")


def _sum_on_rank_0_gather_elsewhere(x):
    # The rank is a constant to dynamo: each rank compiles its own branch.
    if dist.get_rank() == 0:
        return funcol.all_reduce(x, "sum", dist.group.WORLD)
    return all_gather_single(x, 0, dist.group.WORLD)


def rank_dependent():
    return _sum_on_rank_0_gather_elsewhere, (torch.ones(4),)


def _scale(x):
    return x * 2


def raises_on_rank_1():
    # Rank 1 raises only once rank 0 is here too: rank 0 then names _scale as it starts checking
    # it, within the seconds the launcher gives it after rank 1 failed. Without the barrier a
    # loaded machine could stop rank 0 while it still imported this module, before any name.
    dist.barrier()
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 has no shard")  # raises here
    return _scale, (torch.ones(4),)


def exits_on_rank_1():
    """Rank 1 dies without a report; rank 0 sleeps, so the launcher stops it."""
    if dist.get_rank() == 1:
        os._exit(3)
    time.sleep(3600)  # stopped here
