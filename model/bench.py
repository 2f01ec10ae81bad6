"""Decode speed of the reference model against the memory-bandwidth limit of the device.

Batch-1 decode reads every weight once per token, so its floor is (bytes read per token) /
(memory bandwidth). The bandwidth is measured in the same process, with a device-to-device copy,
counting bytes read and written; the bytes per token are the weights plus the KV-cache entries an
ideal kernel would read at the average position. Random weights: speed does not depend on values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import _torch
from .cache import new_cache
from .config import LlamaConfig
from .generate import CACHE_KINDS, step_functions
from .llama import ATTENTION_BACKENDS
from .paged import paged_cache_for
from .params import fuse_projections_, init_params
from .quant import check_scheme
from .quant import quantize as quantize_params
from .tensor_parallel import init_shard, local_kv_heads, make_all_reduce

__all__ = ["BenchSpec", "BenchResult", "DecodeProfile", "copy_bandwidth", "device_name",
           "prompt_lengths", "run_bench", "profile_decode"]


@dataclass(frozen=True)
class BenchSpec:
    """What to build and time: the model, its weights and cache, and how it is compiled.

    run_bench and profile_decode both measure one. Checked when made, before any weight is
    built: a bad field raises TypeError or ValueError naming it.

    fuse: fuse the q/k/v and gate/up projections (fewer, larger matmuls).
    coordinate_descent: compile the decode graph with inductor's coordinate-descent tuning
    (the prefill graph keeps the defaults).
    sdpa_backend: forward's attention choice, one of fullgraph.model.llama.ATTENTION_BACKENDS.
    tensor_parallel: run this rank's shard over the default process group (under torchrun); the
    bytes and the limit are then per GPU.
    quantize, group_size: weight-only quantization of the linears, as `fullgraph.model.quant.quantize`
    takes them; the bytes and the limit are those of the quantized weights.
    cache: "contiguous" or "paged" (pages of `block_size` positions). min_prompt_len (paged only):
    rows' prompt lengths spread evenly from it up to prompt_len.
    """

    config: str
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 256
    compile: bool = True
    fuse: bool = True
    coordinate_descent: bool = False
    sdpa_backend: str = "auto"
    tensor_parallel: bool = False
    quantize: str | None = None
    group_size: int | None = None
    cache: str = "contiguous"
    block_size: int = 16
    min_prompt_len: int | None = None

    def __post_init__(self) -> None:
        _check_choice("config", self.config, LlamaConfig.names())
        if not isinstance(self.device, str):
            raise TypeError(f"BenchSpec: device must be a str, got {type(self.device).__name__}")
        try:
            torch.device(self.device)
        except RuntimeError as error:  # torch lists the device types it knows
            raise ValueError(f"BenchSpec: device {self.device!r} is not a device: {error}") from None
        if not isinstance(self.dtype, torch.dtype):
            raise TypeError(f"BenchSpec: dtype must be a torch.dtype, got {self.dtype!r}")
        for name, least in (("batch_size", 1), ("prompt_len", 1), ("new_tokens", 2),
                            ("block_size", 1)):
            _check_int(name, getattr(self, name), least)
        for name in ("compile", "fuse", "coordinate_descent", "tensor_parallel"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BenchSpec: {name} must be a bool, got {getattr(self, name)!r}")
        _check_choice("sdpa_backend", self.sdpa_backend, ATTENTION_BACKENDS)
        _check_choice("cache", self.cache, CACHE_KINDS)
        if self.quantize is not None:
            try:
                check_scheme(self.quantize, self.group_size)
            except ValueError as error:
                raise ValueError(f"BenchSpec: {error}") from None
        elif self.group_size is not None:
            raise ValueError(f"BenchSpec: group_size applies to quantize='int4' only, got "
                             f"group_size={self.group_size!r} without quantize")
        if self.min_prompt_len is not None:
            if self.cache != "paged":
                raise ValueError("BenchSpec: min_prompt_len: rows of mixed lengths need "
                                 "cache='paged'")
            _check_int("min_prompt_len", self.min_prompt_len, 1)
            if self.min_prompt_len > self.prompt_len:
                raise ValueError(f"BenchSpec: min_prompt_len must be <= prompt_len "
                                 f"({self.prompt_len}), got {self.min_prompt_len}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BenchSpec: {name} must be an int, got {value!r}")
    if value < least:
        raise ValueError(f"BenchSpec: {name} must be >= {least}, got {value}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"BenchSpec: {name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class BenchResult:
    config: str
    world_size: int  # tensor-parallel ranks; figures are for one rank's GPU
    device: str
    device_name: str  # the GPU's model ("NVIDIA H100 80GB HBM3"), or "cpu": figures depend on it
    torch: str
    dtype: str
    batch_size: int
    prompt_len: int
    new_tokens: int
    compiled: bool
    fused: bool  # q/k/v and gate/up projections fused into one matmul each
    quantize: str | None  # weight-only scheme of the linears ("int8", "int4"), None for dense
    group_size: int | None  # int4's inputs per scale
    sdpa_backend: str  # forward's attention choice ("auto": SDPA picks; "flex": flex_attention)
    coordinate_descent: bool  # inductor's coordinate-descent tuning, for the decode graph
    compile_s: float  # first prefill and first three decode steps: both graphs, CUDA-graph recording
    decode_compile_s: float  # the decode part of compile_s
    prefill_ms: float
    ms_per_token: float  # one decode step, all rows of the batch
    tokens_per_s: float  # all rows of the batch
    peak_memory_gb: float | None
    bytes_per_token: int
    bandwidth_gbps: float
    limit_ms_per_token: float
    share_of_limit: float
    cache: str = "contiguous"  # generate's cache kinds: "contiguous" or "paged"
    block_size: int | None = None  # positions per page of a paged cache
    prompt_lens: tuple[int, ...] = ()  # each row's prompt length; all prompt_len unless mixed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def device_name(device: torch.device) -> str:
    """The GPU's model name for a CUDA device, else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


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


def _weight_bytes(params: dict[str, torch.Tensor], *, without: tuple[str, ...] = ()) -> int:
    return sum(p.numel() * p.element_size() for name, p in params.items() if name not in without)


def _bytes_per_token(params: dict[str, torch.Tensor], cfg: LlamaConfig, *, batch_size: int,
                     n_kv_heads: int, mean_context: float, dtype: torch.dtype) -> int:
    weights = _weight_bytes(params)
    per_position = 2 * cfg.n_layers * n_kv_heads * cfg.head_dim * dtype.itemsize
    return int(weights + batch_size * mean_context * per_position)


def prompt_lengths(batch_size: int, prompt_len: int, min_prompt_len: int | None) -> list[int]:
    """Each row's prompt length: all prompt_len, or spread evenly from min_prompt_len up to it."""
    if min_prompt_len is None or batch_size == 1:
        return [prompt_len] * batch_size
    step = (prompt_len - min_prompt_len) / (batch_size - 1)
    return [round(min_prompt_len + row * step) for row in range(batch_size)]


class _DecodeLoop:
    """Greedy prefill then decode of one random prompt batch (the spec's), through generate's step
    functions.

    With tensor_parallel, this rank builds only its shard and sums over the default process group.
    With fuse, it fuses its projections (fuse_projections_) after sharding; with quantize, it then
    quantizes the linears (fullgraph.model.quant). With a paged cache, each row gets the pages its
    prompt and new tokens need; rows of mixed prompt lengths (min_prompt_len) are prefilled one at
    a time and decode at their own positions.
    """

    def __init__(self, spec: BenchSpec):
        device, dtype, batch_size, prompt_len = (spec.torch_device, spec.dtype, spec.batch_size,
                                                 spec.prompt_len)
        # Only the cache length changes, so every batch size and the profile reuse one config and
        # the compiled code that guards on it.
        self.cfg = dataclasses.replace(LlamaConfig.from_name(spec.config),
                                       max_seq_len=prompt_len + spec.new_tokens)
        self.device, self.batch_size, self.prompt_len = device, batch_size, prompt_len
        self.world_size = dist.get_world_size() if spec.tensor_parallel else 1
        if spec.tensor_parallel:
            self.params = init_shard(self.cfg, world_size=self.world_size, rank=dist.get_rank(),
                                     dtype=dtype, device=device)
        else:
            self.params = init_params(self.cfg, dtype=dtype, device=device)
        if spec.fuse:
            fuse_projections_(self.params, self.cfg)
        if spec.quantize is not None:
            self.params = quantize_params(self.params, spec.quantize, group_size=spec.group_size)
        self.n_kv_heads = local_kv_heads(self.cfg, world_size=self.world_size)
        self.options = dict(cfg=self.cfg, sdpa_backend=spec.sdpa_backend, temperature=0.0,
                            top_k=None,
                            all_reduce=make_all_reduce() if spec.tensor_parallel else None)
        self.prompt_lens = prompt_lengths(batch_size, prompt_len, spec.min_prompt_len)
        if spec.cache == "paged":
            self.cache, self.options["block_table"] = paged_cache_for(
                self.cfg, [n + spec.new_tokens for n in self.prompt_lens],
                block_size=spec.block_size, dtype=dtype, device=device, n_kv_heads=self.n_kv_heads)
        else:
            self.cache = new_cache(self.cfg, batch_size=batch_size, dtype=dtype, device=device,
                                   n_kv_heads=self.n_kv_heads)
        self.prefill_fn, self.decode_fn = step_functions(self.params, self.cache,
                                                         compile=spec.compile, device=device)
        # Seeded, so every tensor-parallel rank feeds the same prompt.
        generator = torch.Generator(device=device).manual_seed(0)
        self.prompt = torch.randint(0, self.cfg.vocab_size, (batch_size, prompt_len), device=device,
                                    generator=generator)

    def warm_up(self, *, coordinate_descent: bool) -> tuple[float, float]:
        """Compile both steps and record the decode CUDA graph (on the third decode call).

        Seconds spent on the prefill and on the decode part. Coordinate-descent tuning applies to
        the decode graph only, so the extra compile time goes where it pays.
        """
        prefill_s = _timed(self.prefill, self.device)
        with _decode_tuning(coordinate_descent):
            decode_s = _timed(lambda: self.decode(3), self.device)
        return prefill_s, decode_s

    def prefill(self) -> None:
        if len(set(self.prompt_lens)) == 1:
            positions = torch.arange(self.prompt_len, device=self.device)
            token = self.prefill_fn(self.params, self.prompt, positions, self.cache, **self.options)
            self.token = token.view(self.batch_size, 1)
            self.position = torch.tensor([self.prompt_len], device=self.device)
            return
        tokens = []
        for row, length in enumerate(self.prompt_lens):
            options = {**self.options, "block_table": self.options["block_table"][row: row + 1]}
            tokens.append(self.prefill_fn(self.params, self.prompt[row: row + 1, :length],
                                          torch.arange(length, device=self.device), self.cache,
                                          **options))
        self.token = torch.cat(tokens).view(self.batch_size, 1)
        self.position = torch.tensor(self.prompt_lens, device=self.device).view(self.batch_size, 1)

    def decode(self, steps: int) -> None:
        for _ in range(steps):
            # Cloned: the next CUDA-graph replay overwrites the step's output buffer.
            token = self.decode_fn(self.params, self.token, self.position, self.cache, **self.options)
            self.token = token.clone().view(self.batch_size, 1)
            self.position += 1


def run_bench(spec: BenchSpec, *, bandwidth_gbps: float | None = None) -> BenchResult:
    """Prefill `spec.prompt_len` tokens, then time `spec.new_tokens` greedy decode steps.

    bandwidth_gbps: the device's copy bandwidth, measured here (copy_bandwidth) if None.
    """
    if not isinstance(spec, BenchSpec):
        raise TypeError(f"run_bench: spec must be a BenchSpec, got {type(spec).__name__}")
    torch_device, batch_size, new_tokens = spec.torch_device, spec.batch_size, spec.new_tokens
    loop = _DecodeLoop(spec)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    with torch.inference_mode():
        prefill_compile_s, decode_compile_s = loop.warm_up(coordinate_descent=spec.coordinate_descent)
        prefill_s = _timed(loop.prefill, torch_device)
        decode_s = _timed(lambda: loop.decode(new_tokens - 1), torch_device)

    ms_per_token = decode_s / (new_tokens - 1) * 1e3
    bandwidth = copy_bandwidth(torch_device) if bandwidth_gbps is None else bandwidth_gbps
    bytes_per_token = _bytes_per_token(loop.params, loop.cfg, batch_size=batch_size,
                                       n_kv_heads=loop.n_kv_heads,
                                       mean_context=sum(loop.prompt_lens) / batch_size
                                       + new_tokens / 2, dtype=spec.dtype)
    limit_ms = bytes_per_token / (bandwidth * 1e9) * 1e3
    peak = (torch.cuda.max_memory_allocated(torch_device) / 1e9
            if torch_device.type == "cuda" else None)
    return BenchResult(
        config=spec.config, world_size=loop.world_size, device=str(torch_device),
        device_name=device_name(torch_device), torch=torch.__version__,
        dtype=str(spec.dtype).removeprefix("torch."),
        batch_size=batch_size, prompt_len=spec.prompt_len, new_tokens=new_tokens,
        compiled=spec.compile, fused=spec.fuse, quantize=spec.quantize,
        group_size=spec.group_size, sdpa_backend=spec.sdpa_backend,
        coordinate_descent=spec.coordinate_descent,
        compile_s=prefill_compile_s + decode_compile_s, decode_compile_s=decode_compile_s,
        prefill_ms=prefill_s * 1e3, ms_per_token=ms_per_token,
        tokens_per_s=batch_size * 1e3 / ms_per_token, peak_memory_gb=peak,
        bytes_per_token=bytes_per_token, bandwidth_gbps=bandwidth,
        limit_ms_per_token=limit_ms, share_of_limit=limit_ms / ms_per_token,
        cache=spec.cache, block_size=spec.block_size if spec.cache == "paged" else None,
        prompt_lens=tuple(loop.prompt_lens),
    )


def _decode_tuning(coordinate_descent: bool) -> contextlib.AbstractContextManager:
    # Inductor reads its config when a graph compiles, i.e. on the first decode call; patched
    # here and undone after, since the config is process-wide.
    if not coordinate_descent:
        return contextlib.nullcontext()
    return _torch.coordinate_descent_tuning()


# Kernel-name fragments, lower case, checked in this order: the first match names the category.
# Inductor names its kernels after the fused ops (triton_red_fused__to_copy_..._mm_...), so its
# kernels are sorted by what they fuse before the vendor-library names are looked at.
_KERNEL_CATEGORIES = [
    ("all-reduce", ("nccl", "allreduce", "all_reduce", "cross_device_reduce")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matmul (triton)", ("triton_red_fused_mm", "_mm_", "_addmm_", "_bmm_")),
    ("fused elementwise (triton)", ("triton",)),
    ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "matmul", "splitk", "nvjet", "sm90")),
    ("copy", ("memcpy", "memset", "copy")),
]


def _category(kernel_name: str) -> str:
    name = kernel_name.lower()
    for category, fragments in _KERNEL_CATEGORIES:
        if any(fragment in name for fragment in fragments):
            return category
    return "other kernels"


@dataclass(frozen=True)
class DecodeProfile:
    """Milliseconds per decode step: by kernel category, the launch gaps, and the top kernels.

    matmul_weight_bytes: what the step's matmuls must read, every weight but the embedding table
    (which the step only indexes), so that the matmuls' own bandwidth can be told apart from the
    time spent around them.
    """

    total_ms: float
    by_category: dict[str, float]
    top_kernels: tuple[tuple[str, float], ...]
    matmul_weight_bytes: int

    def matmul_gbps(self) -> float | None:
        """GB/s the matmul kernels (cuBLAS and triton) read the weights at; None if none ran."""
        ms = self.by_category.get("matmul", 0.0) + self.by_category.get("matmul (triton)", 0.0)
        return self.matmul_weight_bytes / (ms / 1e3) / 1e9 if ms > 0 else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _matmul_weight_bytes(params: dict[str, torch.Tensor]) -> int:
    return _weight_bytes(params, without=("tok_embeddings.weight",))


def profile_decode(spec: BenchSpec, *, steps: int = 32) -> DecodeProfile:
    """Where a decode step's time goes, from the GPU kernels the profiler saw over `steps` steps.

    CUDA only: the categories come from kernel names. "launch gaps" is the step's wall time not
    covered by any kernel, i.e. time the GPU sat idle waiting for work.
    """
    if not isinstance(spec, BenchSpec):
        raise TypeError(f"profile_decode: spec must be a BenchSpec, got {type(spec).__name__}")
    torch_device = spec.torch_device
    if torch_device.type != "cuda":
        raise ValueError(f"profile_decode: spec.device must be CUDA, got {spec.device!r}")
    if steps + 3 >= spec.new_tokens:
        raise ValueError(f"profile_decode: steps ({steps}) must be below spec.new_tokens - 3 "
                         f"({spec.new_tokens - 3})")
    loop = _DecodeLoop(spec)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.inference_mode():
        loop.warm_up(coordinate_descent=spec.coordinate_descent)
        with torch.profiler.profile(activities=activities) as profiler:
            wall_s = _timed(lambda: loop.decode(steps), torch_device)
    by_kernel: dict[str, float] = {}
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            event_ms = event.time_range.elapsed_us() / 1e3 / steps
            by_kernel[event.name] = by_kernel.get(event.name, 0.0) + event_ms
    by_category: dict[str, float] = {}
    for name, ms in by_kernel.items():
        by_category[_category(name)] = by_category.get(_category(name), 0.0) + ms
    total_ms = wall_s * 1e3 / steps
    by_category["launch gaps"] = max(total_ms - sum(by_category.values()), 0.0)
    top = sorted(by_kernel.items(), key=lambda item: -item[1])[:10]
    return DecodeProfile(total_ms, by_category, tuple(top), _matmul_weight_bytes(loop.params))
