"""Megatron-style tensor parallel for the reference model, applied from outside it.

Each rank holds a shard of the same param dict and runs the unchanged `forward`:

    wq, wk, wv, w1, w3   column-parallel: split along dim 0 (wq/wk/wv by whole heads)
    wo, w2               row-parallel: split along dim 1, partial outputs summed by an all-reduce
    everything else      replicated

so a layer costs two all-reduces, one after wo and one after w2. When the world is larger than
n_kv_heads, KV heads are replicated: each rank keeps the one KV head its query heads attend to.

Ranks run under torchrun or fullgraph.model.launch (launch_ranks), gloo on CPU and NCCL on CUDA;
fullgraph.model.tp_generate is a ready entry point, and docs/tensor-parallel.md has the commands.
fake_process_group, launch_ranks and teardown_process_group live in fullgraph.model.launch, beside
the launcher, and are exported here too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import _torch
from .config import LlamaConfig
from .launch import fake_process_group, launch_ranks, teardown_process_group
from .llama import AllReduce
from .params import check_params, init_params, materialize_params, param_shapes

__all__ = [
    "local_kv_heads",
    "shard_shapes",
    "shard_params",
    "init_shard",
    "make_all_reduce",
    "backend_for",
    "fake_process_group",
    "launch_ranks",
    "teardown_process_group",
]

# Which weights are split, along which dim, and by which span; every other weight is replicated.
_SPLITS: dict[str, tuple[int, str]] = {
    "attention.wq.weight": (0, "q"),
    "attention.wk.weight": (0, "kv"),
    "attention.wv.weight": (0, "kv"),
    "attention.wo.weight": (1, "q"),
    "feed_forward.w1.weight": (0, "ffn"),
    "feed_forward.w3.weight": (0, "ffn"),
    "feed_forward.w2.weight": (1, "ffn"),
}


def local_kv_heads(cfg: LlamaConfig, *, world_size: int) -> int:
    """KV heads one rank holds: n_kv_heads / world_size, or 1 when the heads are replicated."""
    _check_world(cfg, world_size=world_size, rank=0)
    return max(1, cfg.n_kv_heads // world_size)


def shard_shapes(cfg: LlamaConfig, *, world_size: int) -> dict[str, tuple[int, ...]]:
    """Every rank's param shapes, for `check_params(shard, cfg, shapes=...)`."""
    spans = _spans(cfg, world_size=world_size, rank=0)
    shapes = {}
    for name, shape in param_shapes(cfg).items():
        split = _split_of(name)
        if split is not None:
            dim, span = split
            shape = shape[:dim] + (spans[span][1],) + shape[dim + 1:]
        shapes[name] = shape
    return shapes


def shard_params(
    params: dict[str, Tensor], cfg: LlamaConfig, *, world_size: int, rank: int
) -> dict[str, Tensor]:
    """Rank `rank`'s shard of the full `params`; meta tensors give meta shards.

    Split weights are copied into contiguous tensors of their own, so the full ones can be freed;
    replicated weights are shared with `params`, which is safe because forward never writes them.
    """
    check_params(params, cfg)
    spans = _spans(cfg, world_size=world_size, rank=rank)
    shard = {}
    for name, tensor in params.items():
        split = _split_of(name)
        if split is None:
            shard[name] = tensor
            continue
        dim, span = split
        start, length = spans[span]
        shard[name] = tensor.narrow(dim, start, length).clone(memory_format=torch.contiguous_format)
    return shard


def init_shard(
    cfg: LlamaConfig,
    *,
    world_size: int,
    rank: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Random weights for one rank, allocated only at shard size (70B never materialises whole).

    Not a slice of `init_params(cfg, seed=seed)`: materialize_params seeds each tensor from its
    name, so every rank draws the same values for its shard of a split weight. Replicated weights
    agree across ranks, as they must, so the ranks still form one consistent (different) random
    model. For parity with the single-process model, shard real params with `shard_params`.
    """
    meta = shard_params(init_params(cfg, dtype=dtype, device="meta"), cfg,
                        world_size=world_size, rank=rank)
    shard = materialize_params(meta, cfg=cfg, seed=seed, device=device)
    # materialize_params takes the std from the tensor's own fan-in; a row-parallel shard sees
    # 1/world_size of the real fan-in, so bring it back to the full weight's scale.
    with torch.no_grad():
        for name, tensor in shard.items():
            split = _split_of(name)
            if split is not None and split[0] == 1:
                tensor.mul_(world_size ** -0.5)
    return shard


def make_all_reduce(group: dist.ProcessGroup | None = None) -> AllReduce:
    """The sum over `group` (default: the world) that `forward(..., all_reduce=...)` applies.

    A functional collective, so dynamo traces it into the same graph as the rest of the step
    (in-place `dist.all_reduce` with async_op=True would break the graph).
    """
    if not dist.is_initialized():
        raise RuntimeError("make_all_reduce: no process group; call dist.init_process_group first")
    group = dist.group.WORLD if group is None else group

    def all_reduce(x: Tensor) -> Tensor:
        return _torch.functional_all_reduce(x, "sum", group)

    return all_reduce


def backend_for(device: str | torch.device) -> str:
    """The collective backend for `device`: NCCL on CUDA, gloo elsewhere."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _check_world(cfg: LlamaConfig, *, world_size: int, rank: int) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size <= 0:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    if cfg.n_heads % world_size:
        raise ValueError(f"LlamaConfig.n_heads ({cfg.n_heads}) is not divisible by "
                         f"world_size ({world_size})")
    if cfg.ffn_dim % world_size:
        raise ValueError(f"LlamaConfig.ffn_dim ({cfg.ffn_dim}, from dim, multiple_of and "
                         f"ffn_dim_multiplier) is not divisible by world_size ({world_size})")
    if cfg.n_kv_heads % world_size and world_size % cfg.n_kv_heads:
        raise ValueError(
            f"LlamaConfig.n_kv_heads ({cfg.n_kv_heads}) and world_size ({world_size}) must divide "
            "one another: each rank holds whole KV heads, or one KV head shared by several ranks"
        )


def _spans(cfg: LlamaConfig, *, world_size: int, rank: int) -> dict[str, tuple[int, int]]:
    """(start, length) of this rank's slice along the split dim, per kind of span."""
    _check_world(cfg, world_size=world_size, rank=rank)
    D = cfg.head_dim
    q_heads, ffn = cfg.n_heads // world_size, cfg.ffn_dim // world_size
    # The KV head of this rank's first query head, rank * q_heads // (n_heads / n_kv_heads);
    # with replicated KV heads all of the rank's query heads share that one.
    first_kv = rank * cfg.n_kv_heads // world_size
    return {
        "q": (rank * q_heads * D, q_heads * D),
        "kv": (first_kv * D, local_kv_heads(cfg, world_size=world_size) * D),
        "ffn": (rank * ffn, ffn),
    }


def _split_of(name: str) -> tuple[int, str] | None:
    # "layers.{i}.attention.wq.weight" -> "attention.wq.weight"; top-level names never match.
    return _SPLITS.get(name.split(".", 2)[-1]) if name.startswith("layers.") else None
