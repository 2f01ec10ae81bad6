"""The paged KV cache: a pool of fixed-size pages per layer, reached through a block table.

    k[layer], v[layer]: (num_blocks * block_size, K, D), one pool tensor per layer
    block_table: (B, W) int32 on the device, page ids; position p of row b lives in pool row
        block_table[b, p // block_size] * block_size + p % block_size

A pool is (num_blocks, block_size, K, D) laid out flat, so that writing the new tokens is one
`index_copy_` into a whole input tensor: a write into a view of a graph input would be
functionalised into a scatter over the whole base (see cache.py). The block table is data, passed
like input_pos: which pages a row owns, how many, and in which order never changes a shape, so
decode compiles once and CUDA graphs replay it for every batch composition and length.

Page 0 is the null page. The allocator never hands it out; table entries past a sequence's pages
and the rows of an idle batch slot point at it. Its contents are never attended to by a real
sequence (every position a row reads lies in its own pages), so idle rows may write there.

Decode attention is split-KV (flash decoding): the keys are cut into splits, each split gives its
softmax max, sum and weighted values, and the splits are combined by their log-sum-exp. In plain
torch, indexing the pool with the table is a load that inductor fuses into the score and value
reductions, so a compiled decode step reads each page once, with no gathered copy and parallel
over the splits even at batch 1. On CUDA a triton kernel does the same splits and also skips the
pages past each row's position (kernels.py); the plain-torch version is what it is tested
against.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LlamaConfig
from .kernels import combine_splits, has_triton, paged_decode_attention

__all__ = [
    "NULL_PAGE",
    "PagedKVCache",
    "new_paged_cache",
    "PageAllocator",
    "PoolFullError",
    "paged_cache_for",
    "check_paged_inputs",
    "page_slots",
    "write_pages",
    "gather_pages",
    "split_kv_attention",
]

NULL_PAGE = 0
# Decode cuts the keys into at most this many splits: enough to fill the GPU at batch 1, few
# enough that combining the splits' partial outputs costs little next to reading the keys.
MAX_SPLITS = 32


class PagedKVCache(NamedTuple):
    k: tuple[Tensor, ...]
    v: tuple[Tensor, ...]
    block_size: int

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0] // self.block_size

    def tensors(self) -> tuple[Tensor, ...]:
        return (*self.k, *self.v)


def new_paged_cache(
    cfg: LlamaConfig,
    *,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_kv_heads: int | None = None,
) -> PagedKVCache:
    """A zeroed pool of `num_blocks` pages of `block_size` positions each, page 0 the null page.

    `n_kv_heads` defaults to cfg.n_kv_heads; a tensor-parallel rank passes its local count.
    """
    n_kv_heads = cfg.n_kv_heads if n_kv_heads is None else n_kv_heads
    for name, value, least in (("num_blocks", num_blocks, 2), ("block_size", block_size, 1),
                               ("n_kv_heads", n_kv_heads, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"new_paged_cache: {name} must be an int >= {least}, got {value!r}")
    shape = (num_blocks * block_size, n_kv_heads, cfg.head_dim)

    def per_layer() -> tuple[Tensor, ...]:
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers))

    return PagedKVCache(k=per_layer(), v=per_layer(), block_size=block_size)


class PoolFullError(RuntimeError):
    """The page pool has too few free pages for a request."""


class PageAllocator:
    """Hands out a pool's pages to sequences and takes them back: host-side bookkeeping only.

    A sequence (any hashable id) grows page by page as it gets longer and gives every page back
    when it finishes, so a batch can mix lengths and new sequences reuse finished ones' pages.
    `max_blocks_per_seq` is the block table's width: the most pages one sequence may hold.
    """

    def __init__(self, num_blocks: int, block_size: int, *, max_blocks_per_seq: int):
        for name, value, least in (("num_blocks", num_blocks, 2), ("block_size", block_size, 1),
                                   ("max_blocks_per_seq", max_blocks_per_seq, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"PageAllocator: {name} must be an int >= {least}, got {value!r}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self._free = list(range(num_blocks - 1, NULL_PAGE, -1))  # pop() hands out low ids first
        self._pages: dict[Hashable, list[int]] = {}

    @property
    def free_count(self) -> int:
        return len(self._free)

    def pages(self, seq: Hashable) -> tuple[int, ...]:
        return tuple(self._pages.get(seq, ()))

    def reserve(self, seq: Hashable, length: int) -> None:
        """Give `seq` enough pages for positions 0..length-1; all or nothing."""
        needed = -(-length // self.block_size) - len(self._pages.get(seq, ()))
        if -(-length // self.block_size) > self.max_blocks_per_seq:
            raise ValueError(f"PageAllocator.reserve: sequence {seq!r} of length {length} needs "
                             f"{-(-length // self.block_size)} pages, more than max_blocks_per_seq="
                             f"{self.max_blocks_per_seq} of {self.block_size} positions")
        if needed > len(self._free):
            raise PoolFullError(f"page pool is full: sequence {seq!r} needs {needed} more pages of "
                                f"{self.block_size} positions for length {length}, {len(self._free)} "
                                f"of {self.num_blocks - 1} are free")
        pages = self._pages.setdefault(seq, [])
        pages.extend(self._free.pop() for _ in range(max(needed, 0)))

    def release(self, seq: Hashable) -> None:
        """Return every page of `seq` to the pool."""
        if seq not in self._pages:
            raise KeyError(f"PageAllocator.release: no sequence {seq!r} holds pages")
        self._free.extend(reversed(self._pages.pop(seq)))

    def block_table(self, seqs: Sequence[Hashable | None], *,
                    device: str | torch.device = "cpu") -> Tensor:
        """(len(seqs), max_blocks_per_seq) int32: each row's pages, then the null page.

        A None row is an idle batch slot: all null page.
        """
        rows = []
        for seq in seqs:
            pages = self._pages.get(seq, []) if seq is not None else []
            rows.append(pages + [NULL_PAGE] * (self.max_blocks_per_seq - len(pages)))
        return torch.tensor(rows, dtype=torch.int32, device=device)


def paged_cache_for(cfg: LlamaConfig, lengths: Sequence[int], *, block_size: int,
                    dtype: torch.dtype, device: torch.device,
                    n_kv_heads: int | None = None) -> tuple[PagedKVCache, Tensor]:
    """A pool with just the pages rows of these lengths need, and their block table (B, pages)."""
    pages_per_row = [-(-length // block_size) for length in lengths]
    allocator = PageAllocator(1 + sum(pages_per_row), block_size,
                              max_blocks_per_seq=max(pages_per_row))
    for row, length in enumerate(lengths):
        allocator.reserve(row, length)
    cache = new_paged_cache(cfg, num_blocks=allocator.num_blocks, block_size=block_size,
                            dtype=dtype, device=device, n_kv_heads=n_kv_heads)
    return cache, allocator.block_table(range(len(lengths)), device=device)


def check_paged_inputs(cache: PagedKVCache, block_table: Tensor, positions: Tensor) -> None:
    """Raise ValueError, naming the row and entry, for a table or positions the pool cannot serve.

    positions: (B, S). Reads values, so a host sync: forward calls it in eager mode only.
    """
    if block_table.dim() != 2 or block_table.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"forward: block_table must be (batch, pages) int32, got shape "
                         f"{tuple(block_table.shape)} {block_table.dtype}")
    if block_table.shape[0] != positions.shape[0]:
        raise ValueError(f"forward: block_table has {block_table.shape[0]} rows but tokens has "
                         f"{positions.shape[0]}")
    outside = (block_table < 0) | (block_table >= cache.num_blocks)
    if outside.any():
        row, entry = (int(i) for i in outside.nonzero()[0])
        raise ValueError(f"forward: block_table[{row}, {entry}] = {int(block_table[row, entry])} "
                         f"points past the pool of {cache.num_blocks} pages")
    width = block_table.shape[1] * cache.block_size
    if (positions >= width).any() or (positions < 0).any():
        row = int(((positions >= width) | (positions < 0)).any(dim=1).nonzero()[0])
        raise ValueError(f"forward: input_pos of row {row} reaches {int(positions[row].max())}, "
                         f"outside its block_table row of {block_table.shape[1]} pages of "
                         f"{cache.block_size} positions")
    # A row with pages that writes into the null page has run past its pages; a row without any
    # is an idle slot, whose writes the null page is there to absorb.
    pages = block_table.gather(1, positions // cache.block_size)
    overrun = (pages == NULL_PAGE) & (block_table != NULL_PAGE).any(dim=1, keepdim=True)
    if overrun.any():
        row, index = (int(i) for i in overrun.nonzero()[0])
        position = int(positions[row, index])
        raise ValueError(f"forward: row {row} writes position {position}, but block_table[{row}, "
                         f"{position // cache.block_size}] is the null page: the sequence is "
                         f"longer than its pages")


def page_slots(block_table: Tensor, positions: Tensor, block_size: int) -> Tensor:
    """Pool rows (B, S) of the positions (B, S)."""
    pages = block_table.gather(1, positions // block_size).long()
    return pages * block_size + positions % block_size


def write_pages(cache: PagedKVCache, layer: int, k: Tensor, v: Tensor, slots: Tensor) -> None:
    """Write keys and values (B, S, K, D) in place at pool rows slots (B, S)."""
    cache.k[layer].index_copy_(0, slots.flatten(), k.flatten(0, 1))
    cache.v[layer].index_copy_(0, slots.flatten(), v.flatten(0, 1))


def _table_slots(block_table: Tensor, block_size: int) -> Tensor:
    """Pool rows (B, W * block_size) of every position a row's table covers, in order."""
    offsets = torch.arange(block_size, device=block_table.device)
    return (block_table.long()[:, :, None] * block_size + offsets).flatten(1)


def gather_pages(pool: Tensor, block_table: Tensor, block_size: int) -> Tensor:
    """The rows' positions gathered out of the pool into one (B, K, W * block_size, D) tensor."""
    return pool[_table_slots(block_table, block_size)].transpose(1, 2)


def split_kv_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor,
                       positions: Tensor, *, block_size: int) -> Tensor:
    """Decode attention of q (B, H, 1, D) at positions (B, 1) over the pages: (B, H, 1, D).

    Grouped-query: query head h reads KV head h // (H / K), as SDPA's enable_gqa does.
    """
    B, H, _, D = q.shape
    K = k_pool.shape[1]
    pages_per_split = -(-block_table.shape[1] // MAX_SPLITS)
    if has_triton(q):
        # The same splits in one kernel that stops at each row's position (kernels.py).
        return paged_decode_attention(q, k_pool, v_pool, block_table, positions.reshape(B),
                                      block_size, pages_per_split * block_size)
    # Pad the table with null pages to whole splits; positions there are past every row's end.
    table = F.pad(block_table, (0, -block_table.shape[1] % pages_per_split), value=NULL_PAGE)
    n_splits, split_len = table.shape[1] // pages_per_split, pages_per_split * block_size
    slots = _table_slots(table, block_size).view(B, n_splits, split_len)
    k = k_pool[slots].float()[:, :, :, :, None, :]  # (B, n, C, K, 1, D): fused into the sum below
    v = v_pool[slots].float()[:, :, :, :, None, :]
    q = q.float().view(B, 1, 1, K, H // K, D) / math.sqrt(D)
    scores = (q * k).sum(-1)  # (B, n, C, K, G)
    key_pos = torch.arange(n_splits * split_len, device=q.device).view(n_splits, split_len)
    visible = key_pos[None] <= positions.view(B, 1, 1)  # (B, n, C)
    scores = torch.where(visible[..., None, None], scores, float("-inf"))
    # Per split: max, sum of exponentials and weighted values. A split with nothing visible gets
    # a finite max, so its weights are exp(-inf) = 0 rather than NaN.
    split_max = scores.amax(2).clamp_min(torch.finfo(torch.float32).min)  # (B, n, K, G)
    weights = torch.exp(scores - split_max[:, :, None])
    split_sum = weights.sum(2)
    split_out = (weights[..., None] * v).sum(2)  # (B, n, K, G, D)
    out = combine_splits(split_out, split_max, split_sum, 1)
    return out.view(B, H, 1, D).to(v_pool.dtype)
