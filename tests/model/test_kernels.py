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
    int4_gemv,
    int8_gemv,
    paged_decode_attention,
)
from fullgraph.model.quant import dequantize, quantize


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


def _pack_like_cuda(q: torch.Tensor, inner_k_tiles: int) -> torch.Tensor:
    """Torch's CUDA int4 layout of q (n, k) in 0..15, built as its conversion kernel builds it.

    The CPU has no such conversion; this lets the interpreter read the layout the GPU reads. Word
    [tile, outer, lane, w] packs row tile * 8 + lane // 4 from four bytes of two nibbles each
    (even input high); the bytes' low nibbles go in the word's high half.
    """
    n, k = q.shape
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).long()
    lanes = torch.arange(32)
    rows = torch.arange(n // 8)[:, None] * 8 + lanes // 4
    words = []
    for first_byte in range(0, k // 2, 16):  # 32 inputs a word
        v = [nibbles[rows, first_byte + lanes % 4 + 4 * i] for i in range(4)]
        high = sum((v[i] >> 4) << (4 * i) for i in range(4))
        low = sum((v[i] & 15) << (16 + 4 * i) for i in range(4))
        words.append(high | low)
    packed = torch.stack(words, 1)  # (n / 8, k / 32, 32)
    packed = packed.view(n // 8, k // (16 * inner_k_tiles), inner_k_tiles // 2, 32).transpose(2, 3)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32).contiguous()


def _int4_weight(n: int, k: int, group_size: int, device: str):
    """An int4 weight in torch's CUDA layout, its scales and zeros, and the weight it stands for."""
    if device == "cuda":
        params = quantize({"output.weight": torch.randn(n, k, dtype=torch.bfloat16, device=device)},
                          "int4", group_size=group_size)
        # dequantize unpacks through torch's own int4 matmul: it holds the kernel to its reading.
        return (params["output.weight"], params["output.scales_and_zeros"],
                dequantize(params)["output.weight"].float())
    q = torch.randint(0, 16, (n, k))
    scales_and_zeros = torch.stack([torch.rand(k // group_size, n) / 8,
                                    torch.randn(k // group_size, n) / 8], -1).to(torch.bfloat16)
    scales, zeros = scales_and_zeros.float().repeat_interleave(group_size, 0).unbind(-1)
    inner_k_tiles = 8 if k % 128 == 0 else 2
    return _pack_like_cuda(q, inner_k_tiles), scales_and_zeros, (q - 8) * scales.T + zeros.T


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, k, group_size", [(8, 64, 32), (96, 384, 64), (24, 1152, 128),
                                             (4096, 11008, 128), (11008, 4096, 32)])
def test_int4_gemv_reads_torchs_cuda_int4_layout(n, k, group_size, device):
    if device == "cpu" and n * k > 2**20:
        pytest.skip("the interpreter takes minutes at 7B sizes; the GPU runs them")
    packed, scales_and_zeros, weight = _int4_weight(n, k, group_size, device)
    x = torch.randn(k, dtype=torch.bfloat16, device=device)
    expected = weight @ x.float()
    actual = int4_gemv(x, packed, scales_and_zeros).float()
    # The bf16 weights and outputs round differently along 11,008 inputs; a misread layout is off
    # by the output's whole size.
    assert torch.linalg.norm(actual - expected) / torch.linalg.norm(expected) < 1e-2


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
