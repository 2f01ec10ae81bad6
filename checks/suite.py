"""The main job: every check, run on the bundled reference Llama-2.

This is one of the few places checks/ knows about Llama: the reference model is the default
target. Each check is a function of the target that returns a short detail on success and raises
AssertionError (a CheckFailure, usually) on failure.

The module is the one list of the suite's checks (CHECKS) with each check beside it, at about 500
lines: each is a few lines calling a checker, and the paged checks mirror the contiguous ones,
which reads best side by side.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fullgraph.model import (
    KVCache,
    LlamaConfig,
    PagedKVCache,
    ReferenceLlama,
    check_params,
    forward,
    generate,
    init_params,
    new_cache,
    new_paged_cache,
)
from fullgraph.model.generate import decode_step, step_functions
from fullgraph.model.quant import dequantize, quantize
from fullgraph.model.tensor_parallel import fake_process_group, make_all_reduce, shard_params

from ._compat import breaks as torch_breaks
from ._message import CheckFailure
from .collectives import assert_collectives, find_collectives
from .cudagraphs import assert_cudagraphs
from .grad_modes import assert_grad_modes
from .graph_breaks import assert_no_graph_breaks
from .guards import assert_no_unstable_guards
from .parity import assert_parity, exact_matmuls, logit_tolerance
from .recompiles import assert_recompiles_at_most, recompile_budget
from .sdpa import assert_sdpa_safe

__all__ = ["Target", "CheckResult", "CHECKS", "build_target", "run_checks"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROMPT_LEN = 16
DECODE_STEPS = 64


@dataclass
class Target:
    """The reference model with random weights, and the inputs every check uses."""

    cfg: LlamaConfig
    params: dict[str, torch.Tensor]
    tokens: torch.Tensor  # (2, PROMPT_LEN)
    backend: str
    config_name: str
    device: torch.device
    dtype: torch.dtype
    quantize: str | None = None  # weight-only scheme the params' linears are stored in
    group_size: int | None = None

    @property
    def label(self) -> str:
        weights = "" if self.quantize is None else f", {self.quantize} weights"
        return (f"{self.config_name} on {self.device.type}, {_dtype_name(self.dtype)}{weights}, "
                f"backend {self.backend}")

    def quantized(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dense params stored the way the target's are."""
        if self.quantize is None:
            return params
        return quantize(params, self.quantize, group_size=self.group_size)


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float
    message: str = field(default="", repr=False)  # the whole failure message, for reports

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail,
                "seconds": round(self.seconds, 3), "message": self.message}


def build_target(*, config: str = "tiny", device: str = "cpu", dtype: str = "float32",
                 backend: str = "inductor", quantize: str | None = None,
                 group_size: int | None = None) -> Target:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = LlamaConfig.from_name(config)
    # Checks need a few hundred positions at most; a full-length cache only costs memory.
    cfg = LlamaConfig(**{**cfg.to_dict(), "max_seq_len": min(cfg.max_seq_len, 512)})
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for, but torch sees no CUDA device")
    params = init_params(cfg, dtype=DTYPES[dtype], device=torch_device)
    tokens = torch.randint(0, cfg.vocab_size, (2, PROMPT_LEN), device=torch_device,
                           generator=torch.Generator(device=torch_device).manual_seed(0))
    target = Target(cfg, params, tokens, backend, config, torch_device, DTYPES[dtype], quantize,
                    group_size)
    target.params = target.quantized(params)
    return target




def check_params_match_config(t: Target) -> str:
    # Quantized weights are held to the contract through the dense weights they stand for.
    dense = dequantize(t.params)
    check_params(dense, t.cfg)
    count = sum(p.numel() for p in dense.values())
    return f"{len(t.params)} tensors, {count / 1e6:,.1f}M parameters"


def check_reference_parity(t: Target) -> str:
    # With quantized params the reference runs on their dequantized weights: the quantized
    # linears must compute what they stand for.
    with exact_matmuls():
        expected = ReferenceLlama.from_params(dequantize(t.params), t.cfg)(t.tokens)
        actual = forward(t.params, t.tokens, cfg=t.cfg)
    assert_parity(actual, expected, dtype=t.dtype, depth=t.cfg.n_layers,
                  msg="functional forward vs ReferenceLlama")
    return f"max |diff| {(actual - expected).abs().max().item():.1e} over {tuple(actual.shape)}"


def check_cached_decode_parity(t: Target) -> str:
    half = PROMPT_LEN // 2
    with exact_matmuls(), torch.inference_mode():
        full = forward(t.params, t.tokens, cfg=t.cfg)
        cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
        steps = [forward(t.params, t.tokens[:, :half], cfg=t.cfg, cache=cache,
                         input_pos=torch.arange(half, device=t.device))]
        for pos in range(half, PROMPT_LEN):
            steps.append(forward(t.params, t.tokens[:, pos: pos + 1], cfg=t.cfg, cache=cache,
                                 input_pos=torch.tensor([pos], device=t.device)))
    assert_parity(torch.cat(steps, dim=1), full, dtype=t.dtype, depth=t.cfg.n_layers,
                  msg="cached decode vs full recompute")
    return f"{PROMPT_LEN - half} decode steps after a {half}-token prefill"


def _assert_one_graph(fn: Callable, *args, **kwargs) -> str:
    report = assert_no_graph_breaks(fn, *args, backend="eager", **kwargs)
    torch.compiler.reset()
    try:
        # A break dynamo raises before tracing (a generator, say) shows only under fullgraph=True.
        torch.compile(fn, fullgraph=True, backend="eager")(*args, **kwargs)
    except torch_breaks.unsupported_error() as error:
        raise CheckFailure(f"graph break under fullgraph=True (limit 0)\n  {error}") from None
    return f"{report.graph_count} graph, {sum(report.ops_per_graph)} ops, 0 breaks"


def check_prefill_graph(t: Target) -> str:
    cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
    pos = torch.arange(PROMPT_LEN, device=t.device)
    with torch.inference_mode():
        return _assert_one_graph(forward, t.params, t.tokens, cfg=t.cfg, cache=cache, input_pos=pos)


def check_decode_graph(t: Target) -> str:
    cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
    with torch.inference_mode():
        return _assert_one_graph(decode_step, t.params, t.tokens[:, :1],
                                 torch.tensor([0], device=t.device), cache, **_decode_options(t))


def _training_loss(params: dict[str, torch.Tensor], tokens: torch.Tensor, cfg: LlamaConfig) -> torch.Tensor:
    logits = forward(params, tokens, cfg=cfg)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def check_training_graph(t: Target) -> str:
    if t.quantize is not None:
        return f"not applicable: {t.quantize} weights are for inference, they have no gradient"
    params = {name: p.detach().requires_grad_() for name, p in t.params.items()}
    return _assert_one_graph(_training_loss, params, t.tokens, t.cfg)


TP_WORLD_SIZE = 2


def check_tensor_parallel_collectives(t: Target) -> str:
    # The fake group traces exactly what a real rank would, without spawning ranks; the last
    # rank, so an off-by-one in the sharding of the final rank shows.
    rank = TP_WORLD_SIZE - 1
    with fake_process_group(TP_WORLD_SIZE, rank=rank), torch.inference_mode():
        shard = t.quantized(shard_params(dequantize(t.params), t.cfg, world_size=TP_WORLD_SIZE,
                                         rank=rank))
        report = find_collectives(forward, shard, t.tokens, cfg=t.cfg,
                                  all_reduce=make_all_reduce())
    assert_collectives(report, expected={"all_reduce": 2 * t.cfg.n_layers})
    [result] = report.ranks
    return (f"world {TP_WORLD_SIZE} (fake group): {len(result.graphs)} graph, "
            f"{result.captured['all_reduce']} all-reduces, 0 breaks")


def _decode_options(t: Target) -> dict:
    return dict(cfg=t.cfg, sdpa_backend="auto", temperature=0.0, top_k=None)


def check_decode_compiles_once(t: Target) -> str:
    # Not fullgraph: a function that hits the recompile limit is then recorded and reported with
    # its guard failures, instead of raising from inside the loop.
    step = torch.compile(decode_step, backend="eager")
    cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
    with torch.inference_mode():
        # Created inside inference mode like every later step's token: a normal tensor first and
        # inference tensors after would cost a recompile.
        token, input_pos = t.tokens[:, :1].clone(), torch.tensor([0], device=t.device)
        with recompile_budget(0) as report:
            for _ in range(DECODE_STEPS):
                token = step(t.params, token, input_pos, cache, **_decode_options(t)).view(2, 1)
                input_pos += 1
    return f"{len(report.events)} compile for {DECODE_STEPS} positions"


PREFILL_SHAPES = [(1, 3), (2, 17), (5, 64), (8, 200)]  # (batch, prompt length)


def _prefill(params: dict[str, torch.Tensor], tokens: torch.Tensor, input_pos: torch.Tensor,
             cache: KVCache, cfg: LlamaConfig) -> torch.Tensor:
    return forward(params, tokens, cfg=cfg, input_pos=input_pos, cache=cache)


def check_prefill_recompiles(t: Target) -> str:
    def calls():
        for batch, length in PREFILL_SHAPES:
            tokens = torch.randint(0, t.cfg.vocab_size, (batch, length), device=t.device)
            cache = new_cache(t.cfg, batch_size=batch, dtype=t.dtype, device=t.device)
            yield t.params, tokens, torch.arange(length, device=t.device), cache, t.cfg

    with torch.inference_mode():
        report = assert_recompiles_at_most(_prefill, calls(), 1)
    shapes = ", ".join(f"{b}x{n}" for b, n in PREFILL_SHAPES)
    return f"{len(report.events)} compiles for batch x length {shapes}"


def _decode(params: dict[str, torch.Tensor], token: torch.Tensor, input_pos: torch.Tensor,
            cache: KVCache, cfg: LlamaConfig) -> torch.Tensor:
    return decode_step(params, token, input_pos, cache, cfg=cfg, sdpa_backend="auto",
                       temperature=0.0, top_k=None)


def check_decode_guards_are_stable(t: Target) -> str:
    cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
    with torch.inference_mode():
        token = t.tokens[:, :1].clone()
        calls = [(t.params, token, torch.tensor([pos], device=t.device), cache, t.cfg)
                 for pos in range(4)]
        report = assert_no_unstable_guards(_decode, calls)
    return f"{len(report.events)} compile over {len(calls)} calls, no guard fails call after call"


def check_decode_cudagraphs(t: Target) -> str:
    if t.device.type != "cuda":
        return f"not applicable: CUDA graphs need a CUDA device (target on {t.device.type})"
    cache = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
    # Marks params and cache as static addresses, as generate does before compiling decode.
    step_functions(t.params, cache, compile=True, device=t.device)
    with torch.inference_mode():
        token = t.tokens[:, :1].clone()
        calls = ((t.params, token, torch.tensor([pos], device=t.device), cache, t.cfg)
                 for pos in range(DECODE_STEPS))
        report = assert_cudagraphs(_decode, calls, max_recordings=1, max_memory_growth_mb=0)
    # After the warmup and the recording, every position must replay the one graph.
    expected = DECODE_STEPS - report.warmups - len(report.recordings)
    if report.replays != expected:
        raise CheckFailure(f"{report.replays} CUDA-graph replays over {DECODE_STEPS} positions "
                           f"(expected {expected}: one per position after warmup and recording)\n"
                           f"{report}", report)
    return (f"1 recording, {report.replays} replays for {DECODE_STEPS} positions, 0 skips, "
            f"{report.memory_growth_bytes / 2**20:+.1f} MiB")


PAGE_SIZE = 4  # positions per page: small, so a prompt and its decode steps cross many pages
PAGES_PER_ROW = (PROMPT_LEN + DECODE_STEPS) // PAGE_SIZE


def _paged_cache(t: Target) -> PagedKVCache:
    return new_paged_cache(t.cfg, num_blocks=1 + 2 * PAGES_PER_ROW, block_size=PAGE_SIZE,
                           dtype=t.dtype, device=t.device)


def _shuffled_table(t: Target, seed: int) -> torch.Tensor:
    """Both rows' pages, every page of the pool but the null page, in a random order."""
    order = torch.randperm(2 * PAGES_PER_ROW, generator=torch.Generator().manual_seed(seed)) + 1
    return order.view(2, PAGES_PER_ROW).to(device=t.device, dtype=torch.int32)


def check_paged_parity(t: Target) -> str:
    half = PROMPT_LEN // 2
    with exact_matmuls(), torch.inference_mode():
        contiguous = new_cache(t.cfg, batch_size=2, dtype=t.dtype, device=t.device)
        paged, table = _paged_cache(t), _shuffled_table(t, seed=0)
        steps = [(t.tokens[:, :half], torch.arange(half, device=t.device))]
        steps += [(t.tokens[:, pos: pos + 1], torch.tensor([pos], device=t.device))
                  for pos in range(half, PROMPT_LEN)]
        for tokens, input_pos in steps:
            expected = forward(t.params, tokens, cfg=t.cfg, cache=contiguous, input_pos=input_pos)
            actual = forward(t.params, tokens, cfg=t.cfg, cache=paged, block_table=table,
                             input_pos=input_pos)
            assert_parity(actual, expected, dtype=t.dtype, depth=t.cfg.n_layers,
                          msg=f"paged vs contiguous cache at position {int(input_pos[-1])}")
    return f"prefill and {PROMPT_LEN - half} decode steps over shuffled pages of {PAGE_SIZE}"


def check_paged_prefill_graph(t: Target) -> str:
    pos = torch.arange(PROMPT_LEN, device=t.device)
    with torch.inference_mode():
        return _assert_one_graph(forward, t.params, t.tokens, cfg=t.cfg, cache=_paged_cache(t),
                                 block_table=_shuffled_table(t, seed=0), input_pos=pos)


def check_paged_decode_graph(t: Target) -> str:
    positions = torch.tensor([[0], [PROMPT_LEN]], device=t.device)
    with torch.inference_mode():
        return _assert_one_graph(decode_step, t.params, t.tokens[:, :1], positions, _paged_cache(t),
                                 block_table=_shuffled_table(t, seed=0), **_decode_options(t))


def _paged_decode(params: dict[str, torch.Tensor], token: torch.Tensor, positions: torch.Tensor,
                  cache: PagedKVCache, block_table: torch.Tensor, cfg: LlamaConfig) -> torch.Tensor:
    return decode_step(params, token, positions, cache, cfg=cfg, block_table=block_table,
                       sdpa_backend="auto", temperature=0.0, top_k=None)


LAYOUT_EVERY = 16  # decode steps between two page layouts in the paged sweeps


def _paged_decode_calls(t: Target, cache: PagedKVCache, token: torch.Tensor):
    """DECODE_STEPS calls: rows at their own positions, a new page layout every LAYOUT_EVERY
    steps, and the second row idle (all null page) for one stretch, as between two requests."""
    for step in range(DECODE_STEPS):
        if step % LAYOUT_EVERY == 0:
            table = _shuffled_table(t, seed=step)
            if step == LAYOUT_EVERY:
                table[1] = 0
        positions = torch.tensor([[step], [PROMPT_LEN + step]], device=t.device)
        yield t.params, token, positions, cache, table, t.cfg


def check_paged_decode_compiles_once(t: Target) -> str:
    # Not fullgraph, as in check_decode_compiles_once: a recompile is reported, not raised.
    step = torch.compile(_paged_decode, backend="eager")
    with torch.inference_mode():
        calls = _paged_decode_calls(t, _paged_cache(t), t.tokens[:, :1].clone())
        with recompile_budget(0) as report:
            for call in calls:
                step(*call)
    return (f"{len(report.events)} compile, {DECODE_STEPS} steps: {DECODE_STEPS // LAYOUT_EVERY} "
            f"page layouts, own positions, idle slot")


def check_paged_decode_cudagraphs(t: Target) -> str:
    if t.device.type != "cuda":
        return f"not applicable: CUDA graphs need a CUDA device (target on {t.device.type})"
    cache = _paged_cache(t)
    step_functions(t.params, cache, compile=True, device=t.device)  # marks static addresses
    with torch.inference_mode():
        calls = _paged_decode_calls(t, cache, t.tokens[:, :1].clone())
        report = assert_cudagraphs(_paged_decode, calls, max_recordings=1, max_memory_growth_mb=0)
    return (f"{len(report.recordings)} recording, {report.replays} replays, {DECODE_STEPS} steps, "
            f"{DECODE_STEPS // LAYOUT_EVERY} layouts, {report.memory_growth_bytes / 2**20:+.1f} MiB")


def check_compiled_parity(t: Target) -> str:
    compiled = torch.compile(forward, fullgraph=True, backend=t.backend)
    with exact_matmuls(), torch.inference_mode():
        expected = forward(t.params, t.tokens, cfg=t.cfg)
        actual = compiled(t.params, t.tokens, cfg=t.cfg)
    assert_parity(actual, expected, dtype=t.dtype, depth=t.cfg.n_layers,
                  msg=f"forward compiled with {t.backend} vs eager")
    return f"max |diff| {(actual - expected).abs().max().item():.1e}"


def check_compiled_generation(t: Target) -> str:
    prompts = [t.tokens[0, :5].tolist(), t.tokens[1].tolist()]
    with exact_matmuls():
        eager = generate(t.params, prompts, cfg=t.cfg, max_new_tokens=16, compile=False)
        compiled = generate(t.params, prompts, cfg=t.cfg, max_new_tokens=16, compile=True)
        if compiled == eager:
            return "2 prompts of unequal length, 16 tokens each, identical"
        worst = _worst_greedy_gap(t, prompts, compiled)
    # In low precision a near-tie between two logits may flip under a different kernel order; a
    # compiled token is still right if eager scores it within tolerance of eager's best.
    atol, _ = logit_tolerance(t.dtype, depth=t.cfg.n_layers)
    if worst > atol:
        raise CheckFailure(f"compiled greedy tokens differ from eager, and eager scores a compiled "
                           f"token {worst:.3g} below its best (tolerance {atol:g} at "
                           f"{_dtype_name(t.dtype)}):\n  compiled {compiled}\n  eager    {eager}")
    return f"tokens differ only at near-ties: each within {worst:.2g} of eager's best logit"


def _worst_greedy_gap(t: Target, prompts: list[list[int]], generated: list[list[int]]) -> float:
    """How far below eager's best logit the worst generated token scores, over every row."""
    worst = 0.0
    with torch.inference_mode():
        for prompt, new in zip(prompts, generated):
            sequence = torch.tensor([prompt + new], device=t.device)
            logits = forward(t.params, sequence, cfg=t.cfg)[0, len(prompt) - 1: -1]  # (new, V)
            chosen = logits.gather(1, sequence[0, len(prompt):, None])[:, 0]
            worst = max(worst, (logits.max(dim=1).values - chosen).max().item())
    return worst


def _one_layer(t: Target) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    # Every layer runs the same code, and each compile costs time per layer.
    cfg = dataclasses.replace(t.cfg, n_layers=1)
    return cfg, init_params(cfg, dtype=t.dtype, device=t.device)


def _prefill_with_backend(params: dict[str, torch.Tensor], tokens: torch.Tensor,
                          input_pos: torch.Tensor, cache: KVCache, cfg: LlamaConfig,
                          sdpa_backend: str = "auto") -> torch.Tensor:
    return forward(params, tokens, cfg=cfg, input_pos=input_pos, cache=cache,
                   sdpa_backend=sdpa_backend)


SDPA_SIZES = [(2, 16), (4, 32), (3, 24)]  # (batch, prompt length)


def check_sdpa_backends(t: Target) -> str:
    cfg, params = _one_layer(t)

    def make_inputs(batch: int, seq: int) -> tuple:
        tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=t.device,
                               generator=torch.Generator(device=t.device).manual_seed(seq))
        cache = new_cache(cfg, batch_size=batch, dtype=t.dtype, device=t.device)
        return params, tokens, torch.arange(seq, device=t.device), cache, cfg

    # The eager backend: breaks, guards and the kernel choice are dynamo's, and it compiles fastest.
    report = assert_sdpa_safe(_prefill_with_backend, make_inputs, sizes=SDPA_SIZES,
                              backend="eager", dtype=t.dtype)
    passed = [cell for cell in report.cells if cell.status == "pass"]
    missing = len(report.cells) - len(passed)
    unavailable = f"; {missing} of {len(report.cells)} pairs unavailable" if missing else ""
    return (f"{', '.join(dict.fromkeys(cell.backend for cell in passed))}: 0 breaks, "
            f"{max((len(cell.compiles) for cell in passed), default=0)} compiles{unavailable}")


def check_grad_modes(t: Target) -> str:
    cfg, params = _one_layer(t)
    trainable = {name: p.requires_grad_() for name, p in params.items()}
    report = assert_grad_modes(_training_loss, lambda: (trainable, t.tokens, cfg), dtype=t.dtype)
    return f"0 breaks, 1 compile per mode, grads max |diff| {report.mode('train').grad_max_diff:.1e}"


CHECKS: list[tuple[str, Callable[[Target], str]]] = [
    ("params match the config", check_params_match_config),
    ("parity: forward vs ReferenceLlama", check_reference_parity),
    ("parity: cached decode vs recompute", check_cached_decode_parity),
    ("graph breaks: prefill", check_prefill_graph),
    ("graph breaks: decode", check_decode_graph),
    ("graph breaks: training", check_training_graph),
    ("collectives: tensor-parallel forward", check_tensor_parallel_collectives),
    ("recompiles: decode over positions", check_decode_compiles_once),
    ("recompiles: prefill over shapes", check_prefill_recompiles),
    ("guards: decode guards are stable", check_decode_guards_are_stable),
    ("cuda graphs: decode", check_decode_cudagraphs),
    ("parity: paged cache vs contiguous", check_paged_parity),
    ("graph breaks: paged prefill", check_paged_prefill_graph),
    ("graph breaks: paged decode", check_paged_decode_graph),
    ("recompiles: paged decode", check_paged_decode_compiles_once),
    ("cuda graphs: paged decode", check_paged_decode_cudagraphs),
    ("parity: compiled forward vs eager", check_compiled_parity),
    ("generate: compiled equals eager", check_compiled_generation),
    ("sdpa: every backend, in and out", check_sdpa_backends),
    ("grad modes: train/no_grad/inference", check_grad_modes),
]


def run_checks(target: Target, *, checks: list[tuple[str, Callable[[Target], str]]] = CHECKS,
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run every check in order, each from a clean dynamo; one failing does not stop the rest."""
    results = []
    for name, check in checks:
        torch.compiler.reset()
        start = time.perf_counter()
        try:
            detail, passed, message = check(target), True, ""
        except AssertionError as failure:
            message = str(failure)
            detail, passed = message.strip().splitlines()[0] if message.strip() else "failed", False
        except Exception as error:  # a crash in one check is that check's failure, not the run's
            message = f"{type(error).__name__}: {error}"
            detail, passed = message.splitlines()[0], False
        result = CheckResult(name, passed, detail, time.perf_counter() - start, message)
        results.append(result)
        if on_result is not None:
            on_result(result)
    torch.compiler.reset()
    return results


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
