"""Triton kernels for the CUDA decode step, registered as torch custom ops.

A decode step is bound by memory bandwidth, and two of its parts read memory slowly when left
to torch and inductor:
- int8 linears at one row: inductor turns `F.linear(x, w.to(bf16))` into a reduction that reads
  the weights at about half of the copy bandwidth; `int8_gemv` read them at 77% of it in a 7B
  decode step on an H100 (docs/performance.md).
- decode attention: SDPA over the contiguous cache reads every position up to the cache's length
  and, for one query, runs far below the memory's speed at short contexts; the plain-torch
  split-KV over pages (paged.py) reads every page of the table. `decode_attention` and
  `paged_decode_attention` are one split-KV (flash decoding) kernel that reads each row's keys up
  to its own position only, from either layout.
int4 linears keep torch's tensor-core kernel: a matrix-vector kernel over its layout read the
weights at 38% of the copy bandwidth in a 7B decode step, below torch's 58% (docs/performance.md).
Each is a `torch.library.triton_op`, so dynamo keeps it in the graph, inductor calls it from its
generated code, and CUDA graphs record it like any kernel. The plain-torch paths stay the
reference the kernels are tested against, and what runs on CPU.

Only CUDA tensors go here, and only where triton is installed (torch's CUDA builds bring it; the
CPU build does not): `has_triton` says whether a call may use the kernels.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # torch's CPU build: the callers keep to their PyTorch path
    triton = None

__all__ = ["INTERPRETED", "has_triton", "combine_splits", "int8_gemv", "decode_attention",
           "paged_decode_attention"]

# Under triton's interpreter (TRITON_INTERPRET=1 before import) the kernels run on CPU tensors:
# that is how the tests check them where there is no GPU. It cannot time configs, so the
# autotuned kernels get one each there.
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def has_triton(x: Tensor) -> bool:
    """Whether the model's calls use the kernels on x: a CUDA tensor, with triton installed."""
    return triton is not None and x.is_cuda


def combine_splits(outputs: Tensor, maxes: Tensor, sums: Tensor, dim: int) -> Tensor:
    """Split-KV attention's result from its splits along dim: each split's weighted values
    (outputs, one more trailing dim than the others), its max score and its sum of exponentials.

    Each split is rescaled to the common max (its log-sum-exp), so a split that saw nothing (max
    -inf, sum 0) weighs exp(-inf) = 0, as long as one split saw a key.
    """
    weights = torch.exp(maxes - maxes.amax(dim, keepdim=True))
    return (outputs * weights[..., None]).sum(dim) / (sums * weights).sum(dim)[..., None]


if triton is not None:

    def _tuned(configs: list) -> list:
        return configs[-1:] if INTERPRETED else configs

    def _gemv_configs() -> list:
        # (rows, K block, warps): one to a few rows per program, so that many programs keep enough
        # loads in flight to saturate the memory; wide K blocks give each thread 16-byte loads.
        # Few configs: inductor compiles each one for each shape while compiling the model.
        return _tuned([triton.Config({"BLOCK_N": rows, "BLOCK_K": width}, num_warps=warps)
                       for rows, width, warps in [(1, 2048, 4), (2, 1024, 4), (4, 512, 4),
                                                  (2, 2048, 8), (4, 1024, 8), (8, 512, 8)]])

    @triton.autotune(configs=_gemv_configs(), key=["N", "K"])
    @triton.jit
    def _int8_gemv_kernel(x_ptr, w_ptr, scales_ptr, y_ptr, N, K,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            # The weights are read once per step: keep them from evicting x out of the cache.
            w = tl.load(w_ptr + rows[:, None] * K + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0, eviction_policy="evict_first")
            acc += w.to(tl.float32) * x[None, :]
        scales = tl.load(scales_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, (tl.sum(acc, 1) * scales).to(y_ptr.dtype.element_ty), mask=row_ok)

    @torch.library.triton_op("fullgraph::int8_gemv", mutates_args=())
    def int8_gemv(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
        """(x @ weight.T) * scales for one row x (K,), int8 weight (N, K), scales (N,): (N,)."""
        n, k = weight.shape
        y = torch.empty(n, dtype=x.dtype, device=x.device)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        torch.library.wrap_triton(_int8_gemv_kernel)[grid](x, weight, scales, y, n, k)
        return y

    @triton.jit
    def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, table_ptr, pos_ptr, acc_ptr, max_ptr, sum_ptr,
                                 H, GROUP, TABLE_WIDTH, SPLIT_LEN, N_SPLITS,
                                 row_stride, head_stride, location_stride,
                                 PAGED: tl.constexpr, PAGE: tl.constexpr, D: tl.constexpr,
                                 BLOCK: tl.constexpr):
        # One program: one query head of one row, over one split of that row's positions. A key
        # lives at row * row_stride + kv_head * head_stride + location * location_stride, where
        # location is the position (a contiguous cache) or its pool slot (a paged one).
        row_head, split = tl.program_id(0), tl.program_id(1)
        row, head = row_head // H, row_head % H
        base = row.to(tl.int64) * row_stride + (head // GROUP) * head_stride
        last = tl.load(pos_ptr + row)  # the row's own position: it sees keys 0..last
        dims = tl.arange(0, D)
        q = tl.load(q_ptr + row_head * D + dims).to(tl.float32)  # scaled by 1 / sqrt(D) already
        best = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        acc = tl.zeros((D,), tl.float32)
        start = split * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, last + 1)  # past the row's end: nothing is read
        for block_start in range(start, end, BLOCK):
            positions = block_start + tl.arange(0, BLOCK)
            seen = positions < end
            if PAGED:
                pages = tl.load(table_ptr + row * TABLE_WIDTH + positions // PAGE, mask=seen,
                                other=0)
                locations = pages.to(tl.int64) * PAGE + positions % PAGE
            else:
                locations = positions.to(tl.int64)
            offsets = base + locations[:, None] * location_stride + dims[None, :]
            k = tl.load(k_ptr + offsets, mask=seen[:, None], other=0.0).to(tl.float32)
            scores = tl.where(seen, tl.sum(k * q[None, :], 1), float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, 0))
            weights = tl.exp(scores - new_best)
            rescale = tl.exp(best - new_best)
            v = tl.load(v_ptr + offsets, mask=seen[:, None], other=0.0).to(tl.float32)
            acc = acc * rescale + tl.sum(weights[:, None] * v, 0)
            total = total * rescale + tl.sum(weights, 0)
            best = new_best
        part = row_head * N_SPLITS + split
        tl.store(acc_ptr + part * D + dims, acc)
        tl.store(max_ptr + part, best)
        tl.store(sum_ptr + part, total)

    def _split_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, positions: Tensor, *,
                         kv_heads: int, width: int, split_len: int, strides: tuple[int, int, int],
                         page: int) -> Tensor:
        """Run the kernel over (B * H, splits) and combine the splits: (B, H, 1, D)."""
        B, H, _, D = q.shape
        n_splits = triton.cdiv(width, split_len)
        acc = torch.empty(B * H, n_splits, D, dtype=torch.float32, device=q.device)
        best = torch.empty(B * H, n_splits, dtype=torch.float32, device=q.device)
        total = torch.empty_like(best)
        torch.library.wrap_triton(_decode_attention_kernel)[(B * H, n_splits)](
            # The scale goes into q here: a float argument reaches a kernel that inductor compiles
            # as fp64, which would turn the loop's running max into fp64 (a triton error).
            (q.float() / math.sqrt(D)).contiguous(), k, v, table, positions.contiguous(), acc,
            best, total, H, H // kv_heads, table.shape[-1], split_len, n_splits, *strides,
            PAGED=page > 0, PAGE=max(page, 1), D=D, BLOCK=min(triton.next_power_of_2(split_len), 64))
        # Split 0 always holds position 0: one split saw a key.
        return combine_splits(acc, best, total, 1).view(B, H, 1, D).to(q.dtype)

    @torch.library.triton_op("fullgraph::paged_decode_attention", mutates_args=())
    def paged_decode_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor,
                               positions: Tensor, block_size: int, split_len: int) -> Tensor:
        """Decode attention of q (B, H, 1, D) at positions (B,) over the pages: (B, H, 1, D).

        k_pool, v_pool: (slots, K, D); block_table (B, W). Query head h reads KV head
        h // (H / K). The positions are cut into splits of split_len; a split past a row's
        position reads nothing.
        """
        kv_heads, D = k_pool.shape[1:]
        return _split_attention(q, k_pool, v_pool, block_table.contiguous(), positions,
                                kv_heads=kv_heads, width=block_table.shape[1] * block_size,
                                split_len=split_len, strides=(0, D, kv_heads * D), page=block_size)

    @torch.library.triton_op("fullgraph::decode_attention", mutates_args=())
    def decode_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor,
                         split_len: int) -> Tensor:
        """Decode attention of q (B, H, 1, D) at positions (B,) over a contiguous cache k, v
        (B, K, T, D): (B, H, 1, D), reading each row's keys up to its position only."""
        B, kv_heads, T, D = k.shape
        k, v = k.contiguous(), v.contiguous()
        return _split_attention(q, k, v, positions, positions, kv_heads=kv_heads, width=T,
                                split_len=split_len, strides=(kv_heads * T * D, T * D, D), page=0)

else:

    def int8_gemv(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
        """(x @ weight.T) * scales for one row x (K,), int8 weight (N, K), scales (N,): (N,)."""
        raise RuntimeError("int8_gemv needs triton, which this torch build does not have")

    def paged_decode_attention(q: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor,
                               positions: Tensor, block_size: int, split_len: int) -> Tensor:
        """Decode attention of q (B, H, 1, D) at positions (B,) over the pages: (B, H, 1, D)."""
        raise RuntimeError("paged_decode_attention needs triton, which this torch build does not "
                           "have")

    def decode_attention(q: Tensor, k: Tensor, v: Tensor, positions: Tensor,
                         split_len: int) -> Tensor:
        """Decode attention of q (B, H, 1, D) at positions (B,) over a contiguous cache."""
        raise RuntimeError("decode_attention needs triton, which this torch build does not have")
