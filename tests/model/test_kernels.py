"""The CUDA decode kernels against the plain torch they replace (fullgraph.model.kernels).

Each test runs on CUDA, and on CPU under triton's interpreter: `TRITON_INTERPRET=1` with triton
3.9 or newer (torch 2.15 brings it; `make test-torch` runs this file so), which checks the
kernels' arithmetic and indexing in CI where there is no GPU.
"""

from importlib.metadata import version

import pytest
import torch
import torch.nn.functional as F

from fullgraph.model.kernels import (
    INTERPRETED,
    decode_attention,
    has_triton,
    int8_gemv,
    paged_decode_attention,
)


def _interpreter_runs_them() -> bool:
    # Triton's interpreter before 3.9 (torch 2.11's 3.6) neither takes wrap_triton's kernels nor
    # loops to a bound read from a tensor.
    return INTERPRETED and tuple(map(int, version("triton").split(".")[:2])) >= (3, 9)


DEVICES = [
    pytest.param("cuda", marks=pytest.mark.gpu),
    pytest.param("cpu", marks=pytest.mark.skipif(
        not _interpreter_runs_them(),
        reason="the kernels run on CPU under TRITON_INTERPRET=1 with triton 3.9 or newer")),
]


def test_cpu_tensors_keep_to_the_plain_torch_path():
    assert not has_triton(torch.ones(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, k", [(1, 16), (96, 300), (2049, 1100)])
def test_int8_gemv_equals_the_matmul_on_dequantized_weights(n, k, device):
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
    scales = torch.rand(n, dtype=torch.bfloat16, device=device) / 64
    x = torch.randn(k, dtype=torch.bfloat16, device=device)
    expected = (weight.float() * scales.float()[:, None]) @ x.float()
    torch.testing.assert_close(int8_gemv(x, weight, scales).float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split_len", [16, 64, 512], ids=["many splits", "some", "one"])
def test_decode_attention_equals_sdpa_over_the_positions_written(split_len, device):
    batch, heads, kv_heads, length, head_dim = 3, 4, 2, 300, 16
    generator = torch.Generator().manual_seed(split_len)
    q = torch.randn(batch, heads, 1, head_dim, generator=generator).to(device)
    k, v = (torch.randn(batch, kv_heads, length, head_dim, generator=generator).to(device)
            for _ in "kv")
    # The first position, the last one, and one inside a split, each row its own.
    positions = torch.tensor([0, length - 1, 77], device=device)
    visible = torch.arange(length, device=device) <= positions[:, None, None, None]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)
    actual = decode_attention(q, k, v, positions, split_len)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_paged_decode_attention_reads_each_row_through_its_table(device):
    batch, heads, kv_heads, head_dim, block_size, pages = 2, 4, 2, 16, 4, 6
    generator = torch.Generator().manual_seed(0)
    slots = (1 + batch * pages) * block_size
    k_pool, v_pool = (torch.randn(slots, kv_heads, head_dim, generator=generator) for _ in "kv")
    q = torch.randn(batch, heads, 1, head_dim, generator=generator)
    table = 1 + torch.randperm(batch * pages, generator=generator).view(batch, pages)
    positions = torch.tensor([pages * block_size - 1, 9])
    keys, values = (pool[(table[:, :, None] * block_size + torch.arange(block_size)).flatten(1)]
                    .transpose(1, 2) for pool in (k_pool, v_pool))
    visible = torch.arange(pages * block_size) <= positions[:, None, None, None]
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, enable_gqa=True)
    k_pool, v_pool, q, table, positions = (t.to(device)
                                           for t in (k_pool, v_pool, q, table, positions))
    actual = paged_decode_attention(q, k_pool, v_pool, table, positions, block_size, 2 * block_size)
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-5, rtol=1e-5)
