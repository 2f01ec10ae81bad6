"""The CUDA decode kernels against the plain torch they replace (fullgraph.model.kernels)."""

import pytest
import torch
import torch.nn.functional as F

from fullgraph.model.kernels import decode_attention, has_triton, int4_gemv, int8_gemv
from fullgraph.model.quant import dequantize, quantize


def test_cpu_tensors_keep_to_the_plain_torch_path():
    assert not has_triton(torch.ones(1))


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", [(1, 16), (96, 300), (4096, 4096), (2049, 11008)])
def test_int8_gemv_equals_the_matmul_on_dequantized_weights(n, k):
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
    scales = torch.rand(n, dtype=torch.bfloat16, device="cuda") / 64
    x = torch.randn(k, dtype=torch.bfloat16, device="cuda")
    expected = (weight.float() * scales.float()[:, None]) @ x.float()
    torch.testing.assert_close(int8_gemv(x, weight, scales).float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("split_len", [16, 64, 512], ids=["many splits", "some", "one"])
def test_decode_attention_equals_sdpa_over_the_positions_written(split_len):
    batch, heads, kv_heads, length, head_dim = 3, 4, 2, 300, 16
    generator = torch.Generator(device="cuda").manual_seed(split_len)
    q = torch.randn(batch, heads, 1, head_dim, device="cuda", generator=generator)
    k, v = (torch.randn(batch, kv_heads, length, head_dim, device="cuda", generator=generator)
            for _ in "kv")
    # The first position, the last one, and one inside a split, each row its own.
    positions = torch.tensor([0, length - 1, 77], device="cuda")
    visible = torch.arange(length, device="cuda") <= positions[:, None, None, None]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)
    actual = decode_attention(q, k, v, positions, split_len)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("n, k, group_size", [(8, 64, 32), (96, 384, 64), (4096, 11008, 128),
                                             (11008, 4096, 32)])
def test_int4_gemv_reads_torchs_cuda_int4_layout(n, k, group_size):
    weight = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    params = quantize({"output.weight": weight}, "int4", group_size=group_size)
    x = torch.randn(k, dtype=torch.bfloat16, device="cuda")
    # dequantize unpacks through torch's own int4 matmul, so this holds the kernel to its reading.
    expected = dequantize(params)["output.weight"].float() @ x.float()
    actual = int4_gemv(x, params["output.weight"], params["output.scales_and_zeros"]).float()
    # The bf16 weights and outputs round differently along 11,008 inputs; a misread layout is off
    # by the output's whole size.
    assert torch.linalg.norm(actual - expected) / torch.linalg.norm(expected) < 1e-2
