"""The elementwise pieces of a Llama-2 layer: the RMSNorm before each block's linears and the
SwiGLU product between the feed-forward's. Forward (llama.py) applies them; a linear (quant.py)
may fold them into its kernel, and computes them with these where it does not."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rms_norm", "RMSNorm", "swiglu"]


def rms_norm(weight: Tensor, x: Tensor, *, eps: float) -> Tensor:
    # Normalise in fp32 and round back before scaling, as Meta's RMSNorm does.
    x_fp32 = x.float()
    normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


class RMSNorm(NamedTuple):
    """An RMSNorm's weight and eps, to apply later or to hand to a linear that folds it in."""

    weight: Tensor
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        return rms_norm(self.weight, x, eps=self.eps)


def swiglu(gate_up: Tensor) -> Tensor:
    """SiLU(gate) * up, gate and up the two halves of the last dim."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
