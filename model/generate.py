"""Batched generation: one compiled prefill, one compiled decode step replayed for every position.

Prompts of unequal length are handled the way Meta's generation does it: prefill the shortest
length for the whole batch, then feed the remaining prompt tokens of the longer prompts through
the same decode step, keeping them instead of the sampled token. Every row then uses the same
positions, so no padding mask is needed and results match generating each prompt alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _torch
from .cache import KVCache, new_cache
from .config import LlamaConfig
from .llama import AllReduce, forward, head_counts
from .paged import PagedKVCache, paged_cache_for

__all__ = ["generate", "prefill", "decode_step", "sample", "CACHE_KINDS"]

# The host reads the "all rows hit eos" flag once per this many tokens, not once per token.
EOS_CHECK_INTERVAL = 16
# generate's `cache` choices: one contiguous (B, K, T, D) tensor per layer, or a pool of pages.
CACHE_KINDS = ("contiguous", "paged")


def sample(logits: Tensor, *, temperature: float, top_k: int | None) -> Tensor:
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else top-k sampling."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = torch.where(logits < kth, float("-inf"), logits)
    probs = F.softmax(logits, dim=-1)
    # argmax(p / q) with q ~ Exp(1) draws from p: a multinomial draw with no host sync.
    noise = torch.empty_like(probs).exponential_(1.0)
    return (probs / noise).argmax(dim=-1)


def prefill(params: dict[str, Tensor], tokens: Tensor, input_pos: Tensor,
            cache: KVCache | PagedKVCache, *, cfg: LlamaConfig, sdpa_backend: str,
            temperature: float, top_k: int | None, all_reduce: AllReduce | None = None,
            block_table: Tensor | None = None) -> Tensor:
    logits = forward(params, tokens, cfg=cfg, input_pos=input_pos, cache=cache,
                     sdpa_backend=sdpa_backend, all_reduce=all_reduce, block_table=block_table)
    return sample(logits[:, -1], temperature=temperature, top_k=top_k)


def decode_step(params: dict[str, Tensor], token: Tensor, input_pos: Tensor,
                cache: KVCache | PagedKVCache, *, cfg: LlamaConfig, sdpa_backend: str,
                temperature: float, top_k: int | None, all_reduce: AllReduce | None = None,
                block_table: Tensor | None = None) -> Tensor:
    """One token per row: token (B, 1) at the device-tensor position input_pos (1,); with a paged
    cache, input_pos may be (B, 1), each row at its own position."""
    return prefill(params, token, input_pos, cache, cfg=cfg, sdpa_backend=sdpa_backend,
                   temperature=temperature, top_k=top_k, all_reduce=all_reduce,
                   block_table=block_table)


@functools.cache
def _compiled(fn: Callable, mode: str | None) -> Callable:
    # One wrapper per (function, mode): a fresh torch.compile per call would make dynamo see a new
    # backend each time and compile again.
    return torch.compile(fn, fullgraph=True, mode=mode)


def generate(
    params: dict[str, Tensor],
    prompt_tokens: Sequence[Sequence[int]],
    *,
    cfg: LlamaConfig,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    compile: bool = True,
    device: str | torch.device | None = None,
    sdpa_backend: str = "auto",
    all_reduce: AllReduce | None = None,
    cache: str = "contiguous",
    block_size: int = 16,
) -> list[list[int]]:
    """New tokens for each prompt, stopping before `eos_id` or after `max_new_tokens`.

    Prefill and decode are compiled separately, both with fullgraph=True; on CUDA, decode also runs
    under CUDA graphs (mode="reduce-overhead"). `device` defaults to the params' device.
    Tensor parallel: pass a rank's shard as `params` and the all-reduce over its group (see
    fullgraph.model.tensor_parallel); every rank must call generate with the same prompts.
    cache: "contiguous", or "paged": a pool of `block_size`-position pages with a block table
    (fullgraph.model.paged), each row given the pages its length needs.
    """
    _check_generate_args(prompt_tokens, cfg=cfg, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k)
    if cache not in CACHE_KINDS:
        raise ValueError(f"cache must be one of {list(CACHE_KINDS)}, got {cache!r}")
    lengths = [len(p) for p in prompt_tokens]
    if max_new_tokens == 0:
        return [[] for _ in prompt_tokens]
    embeddings = params["tok_embeddings.weight"]
    device = embeddings.device if device is None else torch.device(device)
    params = {name: t.to(device) for name, t in params.items()}
    batch, shortest, total = len(lengths), min(lengths), max(lengths) + max_new_tokens

    tokens = torch.zeros((batch, total), dtype=torch.long, device=device)
    is_prompt = torch.zeros((batch, total), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompt_tokens):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        is_prompt[row, : len(prompt)] = True
    # A tensor-parallel shard holds fewer KV heads than the config: size the cache from the weights.
    _, n_kv_heads = head_counts(params, prefix="layers.0", head_dim=cfg.head_dim)
    options = dict(cfg=cfg, sdpa_backend=sdpa_backend, temperature=temperature, top_k=top_k,
                   all_reduce=all_reduce)
    if cache == "paged":
        kv_cache, options["block_table"] = paged_cache_for(
            cfg, [total] * batch, block_size=block_size, dtype=embeddings.dtype, device=device,
            n_kv_heads=n_kv_heads)
    else:
        kv_cache = new_cache(cfg, batch_size=batch, dtype=embeddings.dtype, device=device,
                             n_kv_heads=n_kv_heads)
    prefill_fn, decode_fn = step_functions(params, kv_cache, compile=compile, device=device)

    with torch.inference_mode():
        next_token = prefill_fn(params, tokens[:, :shortest],
                                torch.arange(shortest, device=device), kv_cache, **options)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        input_pos = torch.tensor([shortest], device=device)
        for pos in range(shortest, total):
            # Keep prompt tokens where a row's prompt is still going; torch.where also copies the
            # step's output, which the next CUDA-graph replay would overwrite.
            next_token = torch.where(is_prompt[:, pos], tokens[:, pos], next_token)
            tokens[:, pos] = next_token
            if eos_id is not None:
                finished |= ~is_prompt[:, pos] & (next_token == eos_id)
                if (pos - shortest) % EOS_CHECK_INTERVAL == 0 and bool(finished.all()):
                    break
            if pos + 1 == total:
                break
            next_token = decode_fn(params, next_token.view(batch, 1), input_pos, kv_cache, **options)
            input_pos += 1
    return _new_tokens(tokens.tolist(), lengths, max_new_tokens, eos_id)


def step_functions(params: dict[str, Tensor], cache: KVCache | PagedKVCache, *, compile: bool,
                   device: torch.device) -> tuple[Callable, Callable]:
    """(prefill, decode_step), compiled as generate compiles them (decode under CUDA graphs on a
    GPU, params and cache marked static) when `compile`; the bench and the checks use the same."""
    if not compile:
        return prefill, decode_step
    # A param's shape never changes. Said so, a second model compiled in the same process (a
    # quantized one: other shapes and dtypes under the same names) gets static graphs of its own;
    # unsaid, automatic dynamic shapes would turn the weights' sizes into symbols on its recompile.
    for tensor in params.values():
        _torch.mark_static(tensor)
    if device.type != "cuda":
        return _compiled(prefill, None), _compiled(decode_step, None)
    # CUDA graphs copy every input that may move into a static buffer before each replay, and
    # refuse graphs that mutate such inputs. Params and cache stay put, so say so: no copies,
    # and the in-place cache write is allowed.
    for tensor in (*params.values(), *cache.tensors()):
        _torch.mark_static_address(tensor)
    return _compiled(prefill, None), _compiled(decode_step, "reduce-overhead")


def _new_tokens(rows: list[list[int]], lengths: list[int], max_new_tokens: int,
                eos_id: int | None) -> list[list[int]]:
    out = []
    for row, length in zip(rows, lengths):
        new = row[length: length + max_new_tokens]
        if eos_id is not None and eos_id in new:
            new = new[: new.index(eos_id)]
        out.append(new)
    return out


def _check_generate_args(prompt_tokens: Sequence[Sequence[int]], *, cfg: LlamaConfig,
                         max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not prompt_tokens or any(len(p) == 0 for p in prompt_tokens):
        raise ValueError("prompt_tokens must hold at least one non-empty prompt")
    if len(prompt_tokens) > cfg.max_batch_size:
        raise ValueError(f"prompt_tokens holds {len(prompt_tokens)} prompts, more than "
                         f"cfg.max_batch_size={cfg.max_batch_size}")
    for row, prompt in enumerate(prompt_tokens):
        bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt_tokens[{row}] holds ids outside [0, {cfg.vocab_size}): {bad[:5]}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    longest = max(len(p) for p in prompt_tokens)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"cfg.max_seq_len={cfg.max_seq_len}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
