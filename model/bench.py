"""Decode speed of the reference model against the memory-bandwidth limit of the device.

Batch-1 decode reads every weight once per token, so its floor is (bytes read per token) /
(memory bandwidth). The bandwidth is measured in the same process, with a device-to-device copy,
counting bytes read and written; the bytes per token are the weights plus the KV-cache entries an
ideal kernel would read at the average position. Random weights: speed does not depend on values.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import new_cache
from .config import LlamaConfig
from .generate import _step_functions
from .params import init_params

__all__ = ["BenchResult", "copy_bandwidth", "run_bench"]


@dataclass(frozen=True)
class BenchResult:
    config: str
    device: str
    dtype: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    compiled: bool
    compile_s: float
    prefill_ms: float
    ms_per_token: float  # one decode step, all rows of the batch
    tokens_per_s: float  # all rows of the batch
    peak_memory_gb: float | None
    bytes_per_token: int
    bandwidth_gbps: float
    limit_ms_per_token: float
    share_of_limit: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def copy_bandwidth(device: torch.device, *, megabytes: int = 1024, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read and written."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    seconds = _timed(lambda: [target.copy_(source) for _ in range(repeats)], device) / repeats
    return 2 * source.numel() / seconds / 1e9


def _bytes_per_token(params: dict[str, torch.Tensor], cfg: LlamaConfig, *, batch_size: int,
                     mean_context: float, dtype: torch.dtype) -> int:
    weights = sum(p.numel() * p.element_size() for p in params.values())
    per_position = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * dtype.itemsize
    return int(weights + batch_size * mean_context * per_position)


def run_bench(
    config: str,
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 256,
    compile: bool = True,
    bandwidth_gbps: float | None = None,
) -> BenchResult:
    """Prefill `prompt_len` tokens, then time `new_tokens` greedy decode steps."""
    cfg = dataclasses.replace(LlamaConfig.from_name(config), max_seq_len=prompt_len + new_tokens,
                              max_batch_size=max(batch_size, 1))
    torch_device = torch.device(device)
    params = init_params(cfg, dtype=dtype, device=torch_device)
    cache = new_cache(cfg, batch_size=batch_size, dtype=dtype, device=torch_device)
    prefill_fn, decode_fn = _step_functions(params, cache, compile=compile, device=torch_device)
    options = dict(cfg=cfg, sdpa_backend="auto", temperature=0.0, top_k=None)
    prompt = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), device=torch_device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)

    with torch.inference_mode():
        positions = torch.arange(prompt_len, device=torch_device)
        step = {"token": None, "pos": None}

        def do_prefill() -> None:
            step["token"] = prefill_fn(params, prompt, positions, cache, **options).view(batch_size, 1)
            step["pos"] = torch.tensor([prompt_len], device=torch_device)

        def do_decode(steps: int) -> None:
            token, pos = step["token"], step["pos"]
            for _ in range(steps):
                token = decode_fn(params, token, pos, cache, **options).clone().view(batch_size, 1)
                pos += 1

        # Compile and warm up: CUDA graphs record on the third call of the decode step.
        compile_s = _timed(lambda: (do_prefill(), do_decode(3)), torch_device)
        prefill_s = _timed(do_prefill, torch_device)
        decode_s = _timed(lambda: do_decode(new_tokens - 1), torch_device)

    ms_per_token = decode_s / (new_tokens - 1) * 1e3
    bandwidth = copy_bandwidth(torch_device) if bandwidth_gbps is None else bandwidth_gbps
    bytes_per_token = _bytes_per_token(params, cfg, batch_size=batch_size,
                                       mean_context=prompt_len + new_tokens / 2, dtype=dtype)
    limit_ms = bytes_per_token / (bandwidth * 1e9) * 1e3
    peak = (torch.cuda.max_memory_allocated(torch_device) / 1e9
            if torch_device.type == "cuda" else None)
    return BenchResult(
        config=config, device=str(torch_device), dtype=str(dtype).removeprefix("torch."),
        batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, compiled=compile,
        compile_s=compile_s, prefill_ms=prefill_s * 1e3, ms_per_token=ms_per_token,
        tokens_per_s=batch_size * 1e3 / ms_per_token, peak_memory_gb=peak,
        bytes_per_token=bytes_per_token, bandwidth_gbps=bandwidth,
        limit_ms_per_token=limit_ms, share_of_limit=limit_ms / ms_per_token,
    )
