"""Weight-only quantization of the linears: int8 per output channel, int4 per group of inputs.

`quantize(params, scheme)` returns a param dict that `forward` takes unchanged: every linear reads
its weight through `linear`, which dispatches on the keys stored beside the weight. Per linear
(NAME is a weight's name without ".weight", such as "layers.0.attention.wq"):

    dense  NAME.weight            (out, in)  float
    int8   NAME.weight            (out, in)  int8, symmetric per output row: w = q * scale
           NAME.scales            (out,)     the weight's dtype
    int4   NAME.weight            packed by torch's int4 matmul, in the layout of the device it
                                  was quantized on (see `weight_shape`)
           NAME.scales_and_zeros  (in / group, out, 2): w = (q - 8) * scale + zero, q in 0..15

The token embeddings and the norms stay as they are; so does output.weight with
`include_output=False`. Activations stay in the model's dtype: only the bytes a decode step reads
shrink, which is what bounds it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _torch
from .kernels import has_triton, int8_gemv

__all__ = ["SCHEMES", "INT4_GROUP_SIZES", "DEFAULT_INT4_GROUP_SIZE", "ErrorBound", "ERROR_BOUNDS",
           "check_scheme", "quantize", "dequantize", "linear", "weight_shape", "concat_linears"]

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128)
DEFAULT_INT4_GROUP_SIZE = 128


class ErrorBound(NamedTuple):
    """How far a quantized model's logits may be from the dense model's, over the same tokens."""

    max_relative_rms: float  # ||quantized - dense|| / ||dense||, over every logit
    min_greedy_agreement: float  # share of positions whose argmax token is the dense model's


# Measured on random weights, 2 x 256 tokens: the tiny config in fp32 and bf16 (3 seeds), int8
# 0.008-0.010 relative RMS and 0.98-0.99 agreement, int4 with groups of 32, 0.099 and 0.81-0.88;
# Llama-2-7B's shapes in bf16 on an H100, int8 0.0185 and 0.949, int4 0.102 and 0.764 (groups of
# 32) to 0.129 and 0.725 (groups of 128). The bounds leave room for other seeds, sizes and
# devices; one wrong scale lands far outside (0.58 and 0.28 on the tiny config).
ERROR_BOUNDS = {"int8": ErrorBound(0.03, 0.93), "int4": ErrorBound(0.15, 0.70)}

# The suffixes quantization adds beside a weight; their presence is what `linear` dispatches on.
_INT8_SCALES = "scales"
_INT4_SCALES = "scales_and_zeros"
# Each stored tensor of a linear, and its dim along the linear's outputs. The CUDA int4 layout's
# dim 0 is tiles of 8 output rows, each tile holding every input: rows concatenate along it too.
_OUTPUT_DIM = {"weight": 0, _INT8_SCALES: 0, _INT4_SCALES: 1}
# The linears of a layer, fused or not; every other tensor (embeddings, norms) is left as it is.
_LINEAR_KINDS = ("wq", "wk", "wv", "wo", "wqkv", "w1", "w2", "w3", "w13")
# Torch's int4 kernels tile the input dim in blocks of 16 * inner_k_tiles; the widest tiling the
# dim allows is the fastest.
_INNER_K_TILES = (8, 4, 2)


def quantize(
    params: dict[str, Tensor],
    scheme: str,
    *,
    group_size: int | None = None,
    include_output: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """A new param dict with every linear of the layers (and output.weight) quantized.

    scheme: "int8" (per-output-channel symmetric scales) or "int4" (asymmetric, one scale and zero
    per `group_size` inputs: 32, 64 or 128, default 128).
    device: where the result lives. Tensors move there one at a time and each is quantized there,
    so a model too large for the device in its own dtype never is on it whole. int4 weights are
    packed for that device's kernel and run only there.
    """
    group_size = check_scheme(scheme, group_size)
    done = next((name for name in params if name.endswith((f".{_INT8_SCALES}", f".{_INT4_SCALES}"))),
                None)
    if done is not None:
        raise ValueError(f"quantize: params are already quantized ({done} is there); quantize the "
                         "unquantized params once")
    out = {}
    kept: dict[int, Tensor] = {}  # moved tensors kept as they are, so tied ones stay one tensor
    for name, tensor in params.items():
        if not _is_quantized_linear(name, include_output=include_output):
            if id(tensor) not in kept:
                kept[id(tensor)] = tensor if device is None else tensor.to(device)
            out[name] = kept[id(tensor)]
            continue
        tensor = tensor if device is None else tensor.to(device)
        prefix = name.removesuffix(".weight")
        if scheme == "int8":
            out[f"{prefix}.weight"], out[f"{prefix}.{_INT8_SCALES}"] = _int8(tensor)
        else:
            out[f"{prefix}.weight"], out[f"{prefix}.{_INT4_SCALES}"] = _int4(tensor, name, group_size)
    return out


def check_scheme(scheme: str, group_size: int | None) -> int | None:
    """The group size `quantize` will use for these arguments; ValueError naming a bad one."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}")
    if scheme == "int8":
        if group_size is not None:
            raise ValueError(f"quantize: group_size is for int4; int8 has one scale per output "
                             f"channel, got group_size={group_size!r}")
        return None
    group_size = DEFAULT_INT4_GROUP_SIZE if group_size is None else group_size
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"quantize: group_size must be one of {INT4_GROUP_SIZES} for int4, "
                         f"got {group_size!r}")
    return group_size


def _is_quantized_linear(name: str, *, include_output: bool) -> bool:
    if name == "output.weight":
        return include_output
    parts = name.split(".")  # "layers", "3", "attention", "wq", "weight"
    return parts[0] == "layers" and parts[-1] == "weight" and parts[-2] in _LINEAR_KINDS


def _int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    w = weight.float()
    # Scales are rounded to the weight's dtype first, so q is computed against the stored scale.
    scales = (w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127).to(weight.dtype)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def _int4(weight: Tensor, name: str, group_size: int) -> tuple[Tensor, Tensor]:
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"quantize: group_size {group_size} does not divide the input dim {k} of "
                         f"{name} (shape {tuple(weight.shape)})")
    inner_k_tiles = next((t for t in _INNER_K_TILES if k % (16 * t) == 0), None)
    if inner_k_tiles is None or n % 8:
        raise ValueError(f"quantize: int4 needs the output dim of {name} to be a multiple of 8 and "
                         f"its input dim a multiple of 32, got shape {tuple(weight.shape)}")
    # The CUDA kernel computes in bf16; the CPU kernel in the activations' dtype.
    dtype = torch.bfloat16 if weight.device.type == "cuda" else weight.dtype
    groups = weight.float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scales = ((high - low).clamp(min=1e-6) / 15).to(dtype)
    zeros = (low + scales.float() * 8).to(dtype)
    q = torch.round((groups - zeros.float()[..., None]) / scales.float()[..., None]) + 8
    q = q.clamp(0, 15).to(torch.int32).reshape(n, k)
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()
    return _pack_int4(q, inner_k_tiles), scales_and_zeros


def _pack_int4(q: Tensor, inner_k_tiles: int) -> Tensor:
    if q.device.type == "cuda":
        # Two values a byte, even columns in the high nibble, as the CUDA conversion expects.
        nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        return _torch.convert_weight_to_int4pack(nibbles, inner_k_tiles)
    return _torch.convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)


def linear(params: dict[str, Tensor], x: Tensor, name: str) -> Tensor:
    """x @ W.T for the linear NAME, whatever layout its weight is stored in."""
    weight = params[f"{name}.weight"]
    scales = params.get(f"{name}.{_INT8_SCALES}")
    if scales is not None:
        if has_triton(x) and x.numel() == x.shape[-1]:
            # One row (batch-1 decode): a matrix-vector kernel that reads the weights near the
            # memory's speed, where inductor's reduction reaches about half of it.
            return int8_gemv(x.reshape(-1), weight, scales).view(*x.shape[:-1], -1)
        # The cast sits in the matmul's input so that inductor fuses it into the kernel, which
        # then reads the int8 bytes; the per-row scale applies to the output.
        return F.linear(x, weight.to(x.dtype)) * scales
    scales_and_zeros = params.get(f"{name}.{_INT4_SCALES}")
    if scales_and_zeros is not None:
        return _int4_linear(x, weight, scales_and_zeros)
    return F.linear(x, weight)


def _int4_linear(x: Tensor, packed: Tensor, scales_and_zeros: Tensor) -> Tensor:
    groups, n, _ = scales_and_zeros.shape
    k = x.shape[-1]
    mm = (_torch.weight_int4pack_mm if packed.device.type == "cuda"
          else _torch.weight_int4pack_mm_for_cpu)
    y = mm(x.reshape(-1, k).to(scales_and_zeros.dtype), packed, k // groups, scales_and_zeros)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def weight_shape(params: dict[str, Tensor], name: str) -> tuple[int, int]:
    """(out, in) of the linear NAME, read off its stored weight in any layout."""
    weight = params[f"{name}.weight"]
    if f"{name}.{_INT4_SCALES}" not in params:
        return tuple(weight.shape)
    if weight.dim() == 4:
        # CUDA: int32 (n / 8, k / (16 * inner_k_tiles), 32, inner_k_tiles / 2)
        return weight.shape[0] * 8, weight.shape[1] * weight.shape[3] * 32
    return weight.shape[0], weight.shape[1] * 2  # CPU: uint8 (n, k / 2)


def dequantize(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The param dict with every quantized weight turned back into (out, in) floats.

    What a quantized forward computes is the plain forward over these weights; tests hold it to
    that. Each weight comes back in its scales' dtype.
    """
    out = {}
    for name, tensor in params.items():
        if name.endswith((f".{_INT8_SCALES}", f".{_INT4_SCALES}")):
            continue
        prefix = name.removesuffix(".weight")
        if f"{prefix}.{_INT8_SCALES}" in params:
            scales = params[f"{prefix}.{_INT8_SCALES}"]
            out[name] = (tensor.float() * scales.float()[:, None]).to(scales.dtype)
        elif f"{prefix}.{_INT4_SCALES}" in params:
            # The kernel applied to the identity gives back the weight it reads, transposed: the
            # one way to unpack that holds for every device's layout.
            n, k = weight_shape(params, prefix)
            scales_and_zeros = params[f"{prefix}.{_INT4_SCALES}"]
            eye = torch.eye(k, dtype=scales_and_zeros.dtype, device=tensor.device)
            out[name] = _int4_linear(eye, tensor, scales_and_zeros).T.contiguous()
        else:
            out[name] = tensor
    return out


def concat_linears(params: dict[str, Tensor], names: list[str], fused: str) -> None:
    """Replace the linears NAMES by one linear FUSED whose outputs are theirs in order, in place.

    Quantization is per output row (int8) or per output row and input group (int4), so fusing
    quantized linears stores exactly what quantizing the fused one would.
    """
    for suffix, dim in _OUTPUT_DIM.items():
        if f"{names[0]}.{suffix}" in params:
            params[f"{fused}.{suffix}"] = torch.cat([params.pop(f"{name}.{suffix}") for name in names],
                                                    dim=dim)
