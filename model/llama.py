"""Llama-2 as plain functions over a parameter dict.

Shape legend:
    B  batch                 S  new tokens in this call     T  cache length (max_seq_len)
    H  query heads           K  key/value heads             D  head dim (dim // n_heads)
    E  model dim             F  feed-forward dim            V  vocab

Every function takes params first, data next, and configuration keyword-only. The only argument a
forward mutates is the KV cache; params are never written. Head counts are read off the weight
shapes rather than the config, so a tensor-parallel shard of the params runs through the same code.
Each linear reads its weight through `quant.linear`, so quantized params run through it as well.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from .cache import KVCache
from .config import LlamaConfig
from .kernels import decode_attention, has_triton
from .paged import (
    MAX_SPLITS,
    PagedKVCache,
    check_paged_inputs,
    gather_pages,
    page_slots,
    split_kv_attention,
    write_pages,
)
from .quant import linear, weight_shape

__all__ = [
    "SDPA_BACKENDS",
    "ATTENTION_BACKENDS",
    "rms_norm",
    "rope_tables",
    "apply_rope",
    "attention",
    "head_counts",
    "feed_forward",
    "block",
    "forward",
]

SDPA_BACKENDS: dict[str, SDPBackend | None] = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
# Backends whose kernels take fewer KV heads than query heads; the others get K expanded to H.
_NATIVE_GQA = {"auto", "math", "flash"}
# Every sdpa_backend forward takes: SDPA's, and "flex", flex_attention with a block mask that
# skips whole blocks of cache positions not yet written (SDPA reads the whole cache, masked).
ATTENTION_BACKENDS = (*SDPA_BACKENDS, "flex")

AllReduce = Callable[[Tensor], Tensor]


def rms_norm(weight: Tensor, x: Tensor, *, eps: float) -> Tensor:
    # Normalise in fp32 and round back before scaling, as Meta's RMSNorm does.
    x_fp32 = x.float()
    normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


def rope_tables(input_pos: Tensor, *, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of every (position, frequency) pair, (S, D/2) each, in fp32.

    Positions (B, S), one row per sequence as a paged cache takes them, give (B, S, D/2).

    Computed from the positions on the fly: the tables are a few kilobytes and fuse into the
    graph, and no table argument has to follow the params around.
    """
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=input_pos.device, dtype=torch.float32)
                            / head_dim)
    angles = input_pos.to(torch.float32)[..., None] * freqs  # (S, D/2) or (B, S, D/2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by the position's angle: Meta's layout, in real numbers."""
    B, S, N, D = x.shape
    pairs = x.float().reshape(B, S, N, D // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]  # (B, S, N, D/2)
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads (and batch)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.reshape(B, S, N, D).type_as(x)


def attention(
    params: dict[str, Tensor],
    x: Tensor,
    *,
    prefix: str,
    layer: int,
    cfg: LlamaConfig,
    cos: Tensor,
    sin: Tensor,
    input_pos: Tensor,
    cache: KVCache | PagedKVCache | None,
    sdpa_backend: str,
    block_table: Tensor | None = None,
) -> Tensor:
    B, S, _ = x.shape
    D = cfg.head_dim
    H, K = head_counts(params, prefix=prefix, head_dim=D)
    if f"{prefix}.attention.wqkv.weight" not in params:
        q, k, v = (linear(params, x, f"{prefix}.attention.{w}") for w in ("wq", "wk", "wv"))
    else:
        q, k, v = linear(params, x, f"{prefix}.attention.wqkv").split([H * D, K * D, K * D], dim=-1)
    q = apply_rope(q.view(B, S, H, D), cos, sin)
    k = apply_rope(k.view(B, S, K, D), cos, sin)
    v = v.view(B, S, K, D)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, S, D)

    paged = isinstance(cache, PagedKVCache)
    if cache is not None and not paged:
        # Write the new keys and values in place at input_pos, then attend over the whole cache;
        # positions not yet written are masked out. Shapes never depend on the position.
        cache.k[layer].index_copy_(2, input_pos, k)
        cache.v[layer].index_copy_(2, input_pos, v)
        k, v = cache.k[layer], cache.v[layer]  # (B, K, T, D)

    if paged:
        y = _paged_attention(q, k, v, layer=layer, cache=cache, block_table=block_table,
                             positions=input_pos.expand(B, S), sdpa_backend=sdpa_backend)
    elif sdpa_backend == "flex":
        # Query i sees cache positions up to its own; without a cache, keys are the S new tokens.
        last_seen = input_pos if cache is not None else torch.arange(S, device=x.device)
        y = _flex(q, k, v, last_seen=last_seen)
    elif cache is None:
        # Always causal: for one token it changes nothing, and `S > 1` would be a SymBool once the
        # length is dynamic, which scaled_dot_product_attention does not take (a graph break).
        y = _sdpa(q, k, v, mask=None, is_causal=True, backend=sdpa_backend)
    elif has_triton(q) and S == 1 and sdpa_backend == "auto":
        # Decode on CUDA: split-KV that reads each row's keys up to its position (kernels.py).
        per_split = -(-k.shape[2] // MAX_SPLITS)
        y = decode_attention(q, k, v, input_pos.expand(B), -(-per_split // 16) * 16)
    else:
        positions = torch.arange(k.shape[2], device=x.device)
        mask = positions[None, :] <= input_pos[:, None]  # (S, T)
        y = _sdpa(q, k, v, mask=mask, is_causal=False, backend=sdpa_backend)  # (B, H, S, D)
    y = y.transpose(1, 2).reshape(B, S, H * D)
    return linear(params, y, f"{prefix}.attention.wo")


def _paged_attention(q: Tensor, k: Tensor, v: Tensor, *, layer: int, cache: PagedKVCache,
                     block_table: Tensor, positions: Tensor, sdpa_backend: str) -> Tensor:
    """Write k, v (B, K, S, D) through the block table, then attend q (B, H, S, D) over each row's
    pages; positions (B, S) are every row's own."""
    write_pages(cache, layer, k.transpose(1, 2), v.transpose(1, 2),
                page_slots(block_table, positions, cache.block_size))
    if positions.shape[1] == 1 and sdpa_backend == "auto":
        # Decode: split-KV over the pages, read in place (see paged.py).
        return split_kv_attention(q, cache.k[layer], cache.v[layer], block_table, positions,
                                  block_size=cache.block_size)
    keys = gather_pages(cache.k[layer], block_table, cache.block_size)  # (B, K, W * block_size, D)
    values = gather_pages(cache.v[layer], block_table, cache.block_size)
    visible = torch.arange(keys.shape[2], device=q.device) <= positions[:, :, None]  # (B, S, L)
    return _sdpa(q, keys, values, mask=visible[:, None], is_causal=False, backend=sdpa_backend)


def head_counts(params: dict[str, Tensor], *, prefix: str, head_dim: int) -> tuple[int, int]:
    """(query heads, KV heads) of one layer, read off its weights: a shard has fewer than the config."""
    n_heads = weight_shape(params, f"{prefix}.attention.wo")[1] // head_dim
    if f"{prefix}.attention.wqkv.weight" not in params:
        return n_heads, weight_shape(params, f"{prefix}.attention.wk")[0] // head_dim
    return n_heads, (weight_shape(params, f"{prefix}.attention.wqkv")[0] // head_dim - n_heads) // 2


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, is_causal: bool,
          backend: str) -> Tensor:
    n_rep = q.shape[1] // k.shape[1]
    gqa = n_rep > 1 and backend in _NATIVE_GQA
    if n_rep > 1 and not gqa:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    kwargs = {"attn_mask": mask, "is_causal": is_causal, "enable_gqa": gqa}
    kernel = SDPA_BACKENDS[backend]
    if kernel is None:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    # Entering sdpa_kernel inside the compiled region does not break the graph.
    with sdpa_kernel([kernel]):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def _flex(q: Tensor, k: Tensor, v: Tensor, *, last_seen: Tensor) -> Tensor:
    def up_to_own_position(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= last_seen[q_idx]

    # Built from a device tensor inside the graph: no host sync, and static shapes for CUDA graphs.
    block_mask = create_block_mask(up_to_own_position, B=None, H=None, Q_LEN=q.shape[2],
                                   KV_LEN=k.shape[2], device=q.device)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def feed_forward(params: dict[str, Tensor], x: Tensor, *, prefix: str) -> Tensor:
    if f"{prefix}.feed_forward.w13.weight" not in params:
        gate, up = (linear(params, x, f"{prefix}.feed_forward.{w}") for w in ("w1", "w3"))
    else:
        gate, up = linear(params, x, f"{prefix}.feed_forward.w13").chunk(2, dim=-1)
    return linear(params, F.silu(gate) * up, f"{prefix}.feed_forward.w2")  # SwiGLU, (B, S, E)


def block(
    params: dict[str, Tensor],
    x: Tensor,
    *,
    layer: int,
    cfg: LlamaConfig,
    cos: Tensor,
    sin: Tensor,
    input_pos: Tensor,
    cache: KVCache | PagedKVCache | None,
    sdpa_backend: str,
    all_reduce: AllReduce | None = None,
    block_table: Tensor | None = None,
) -> Tensor:
    prefix = f"layers.{layer}"
    normed = rms_norm(params[f"{prefix}.attention_norm.weight"], x, eps=cfg.norm_eps)
    attn = attention(params, normed, prefix=prefix, layer=layer, cfg=cfg, cos=cos, sin=sin,
                     input_pos=input_pos, cache=cache, sdpa_backend=sdpa_backend,
                     block_table=block_table)
    h = x + (attn if all_reduce is None else all_reduce(attn))
    ffn = feed_forward(params, rms_norm(params[f"{prefix}.ffn_norm.weight"], h, eps=cfg.norm_eps),
                       prefix=prefix)
    return h + (ffn if all_reduce is None else all_reduce(ffn))


def _check_ids(tokens: Tensor, input_pos: Tensor, *, cfg: LlamaConfig,
               cache: KVCache | PagedKVCache | None) -> None:
    """Token ids and cache positions that torch would reject deep inside with an index error.

    dtypes are checked always (free while tracing); values only in eager mode, at the cost of
    one host sync: read under torch.compile they would break the graph or sync every step.
    """
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must hold integer token ids (int64 or int32), got {tokens.dtype}")
    if cache is not None and input_pos.dtype != torch.int64:
        raise TypeError(f"input_pos must be int64 to index the cache, got {input_pos.dtype}")
    if torch.compiler.is_compiling() or tokens.numel() == 0:
        return
    bounds = [*torch.aminmax(tokens)]
    if isinstance(cache, KVCache):  # a paged cache's positions are checked against its table
        bounds += torch.aminmax(input_pos)
    lowest, highest, *positions = torch.stack(bounds).tolist()
    if lowest < 0 or highest >= cfg.vocab_size:
        raise ValueError(f"tokens: ids must be in [0, vocab_size={cfg.vocab_size}), "
                         f"got ids from {lowest} to {highest}")
    if positions and (positions[0] < 0 or positions[1] >= cache.max_seq_len):
        raise ValueError(f"input_pos: positions must be in [0, the cache's "
                         f"max_seq_len={cache.max_seq_len}), got {positions[0]} to {positions[1]}")


def forward(
    params: dict[str, Tensor],
    tokens: Tensor,
    *,
    cfg: LlamaConfig,
    input_pos: Tensor | None = None,
    cache: KVCache | PagedKVCache | None = None,
    sdpa_backend: str = "auto",
    all_reduce: AllReduce | None = None,
    block_table: Tensor | None = None,
) -> Tensor:
    """Logits (B, S, V) in fp32 for tokens (B, S).

    input_pos: positions of the S tokens, a device tensor (default 0..S-1). With a cache, their
    keys and values are written there and the tokens attend to everything before them.
    all_reduce: sums a row-parallel projection's partial output over tensor-parallel ranks.
    block_table: with a PagedKVCache, (B, pages) int32, each row's pages in order; input_pos is
    then (S,) shared by every row or (B, S), each row's own.
    """
    if sdpa_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"sdpa_backend must be one of {list(ATTENTION_BACKENDS)}, got {sdpa_backend!r}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
    if isinstance(cache, PagedKVCache):
        _check_paged(cache, block_table, tokens, input_pos, sdpa_backend)
    elif cache is not None and cache.batch_size != tokens.shape[0]:
        raise ValueError(f"cache holds {cache.batch_size} sequences but tokens has {tokens.shape[0]}")
    if input_pos is None:
        input_pos = torch.arange(tokens.shape[1], device=tokens.device)
    _check_ids(tokens, input_pos, cfg=cfg, cache=cache)
    cos, sin = rope_tables(input_pos, head_dim=cfg.head_dim, theta=cfg.rope_theta)
    x = F.embedding(tokens, params["tok_embeddings.weight"])  # (B, S, E)
    for layer in range(cfg.n_layers):
        x = block(params, x, layer=layer, cfg=cfg, cos=cos, sin=sin, input_pos=input_pos,
                  cache=cache, sdpa_backend=sdpa_backend, all_reduce=all_reduce,
                  block_table=block_table)
    x = rms_norm(params["norm.weight"], x, eps=cfg.norm_eps)
    return linear(params, x, "output").float()


def _check_paged(cache: PagedKVCache, block_table: Tensor | None, tokens: Tensor,
                 input_pos: Tensor | None, sdpa_backend: str) -> None:
    if sdpa_backend == "flex":
        raise ValueError("sdpa_backend='flex' does not take a paged cache: use 'auto' (split-KV "
                         "decode) or an SDPA kernel")
    if block_table is None:
        raise ValueError("forward: a paged cache needs block_table, (batch, pages) int32")
    # Checking the table's values reads them on the host: eager only, the compiled step trusts
    # what eager checked, as it trusts input_pos.
    if torch.compiler.is_compiling():
        return
    B, S = tokens.shape
    positions = torch.arange(S, device=tokens.device) if input_pos is None else input_pos
    if positions.dim() not in (1, 2) or positions.shape[-1] != S or (
            positions.dim() == 2 and positions.shape[0] not in (1, B)):
        raise ValueError(f"forward: with a paged cache, input_pos must be ({S},) or ({B}, {S}), "
                         f"got shape {tuple(positions.shape)}")
    check_paged_inputs(cache, block_table, positions.expand(B, S))
