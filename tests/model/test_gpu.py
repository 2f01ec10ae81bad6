"""The CUDA path of the reference model: CUDA graphs for decode. Run on a GPU machine."""

import pytest
import torch
from torch._dynamo.utils import counters

from fullgraph.model import forward, generate, init_params

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("highest_precision")]

PROMPTS = [[1, 5, 9], [7, 3, 3, 2, 8, 100, 42]]


def test_cuda_graph_decode_matches_eager_without_skips(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    counters.clear()
    eager = generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=48, compile=False)
    compiled = generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=48, compile=True)
    assert compiled == eager
    assert counters["inductor"]["cudagraph_skips"] == 0


def test_flex_decode_under_cuda_graphs_matches_eager_sdpa_without_skips(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    counters.clear()
    eager = generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=48, compile=False)
    compiled = generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=48, compile=True,
                        sdpa_backend="flex")
    assert compiled == eager
    assert counters["inductor"]["cudagraph_skips"] == 0


def test_cuda_graph_decode_memory_is_flat(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=16)
    torch.cuda.synchronize()
    short = torch.cuda.max_memory_allocated()
    generate(params, PROMPTS, cfg=tiny_cfg, max_new_tokens=400)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() <= short * 1.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bf16_forward_matches_fp32_on_cuda(tiny_cfg, dtype):
    from fullgraph.checks.parity import assert_parity

    low = init_params(tiny_cfg, dtype=dtype, device="cuda")
    tokens = torch.randint(0, tiny_cfg.vocab_size, (2, 64), device="cuda")
    expected = forward({k: v.float() for k, v in low.items()}, tokens, cfg=tiny_cfg)
    assert_parity(forward(low, tokens, cfg=tiny_cfg), expected, dtype=dtype)


@pytest.mark.parametrize("backend", ["math", "flash", "efficient", "cudnn"])
def test_every_sdpa_backend_runs_prefill_compiled(tiny_cfg, backend):
    params = init_params(tiny_cfg, dtype=torch.bfloat16, device="cuda")
    tokens = torch.randint(0, tiny_cfg.vocab_size, (2, 64), device="cuda")
    expected = forward(params, tokens, cfg=tiny_cfg, sdpa_backend="math")
    compiled = torch.compile(forward, fullgraph=True)
    from fullgraph.checks.parity import assert_parity

    assert_parity(compiled(params, tokens, cfg=tiny_cfg, sdpa_backend=backend), expected,
                  dtype=torch.bfloat16)


def test_bench_profile_splits_a_decode_step_into_kernel_categories():
    from fullgraph.model.bench import BenchSpec, profile_decode

    breakdown = profile_decode(BenchSpec("tiny", device="cuda", dtype=torch.bfloat16, prompt_len=8,
                                         new_tokens=24), steps=8)
    assert breakdown.total_ms > 0 and breakdown.by_category["matmul"] > 0
    # Kernels and gaps add up to the step, unless kernels overlap (then gaps are 0).
    assert sum(breakdown.by_category.values()) >= breakdown.total_ms * 0.99
    assert len(breakdown.top_kernels) <= 10 and breakdown.top_kernels[0][1] > 0
    assert breakdown.matmul_weight_bytes > 0 and breakdown.matmul_gbps() > 0
