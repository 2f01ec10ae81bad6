"""The parameter dict: Meta's checkpoint names and shapes are the contract.

    tok_embeddings.weight                  (vocab, dim)
    layers.{i}.attention_norm.weight       (dim,)
    layers.{i}.attention.wq.weight         (n_heads * head_dim, dim)
    layers.{i}.attention.wk.weight         (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wv.weight         (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wo.weight         (dim, n_heads * head_dim)
    layers.{i}.ffn_norm.weight             (dim,)
    layers.{i}.feed_forward.w1.weight      (ffn_dim, dim)      gate
    layers.{i}.feed_forward.w2.weight      (dim, ffn_dim)      down
    layers.{i}.feed_forward.w3.weight      (ffn_dim, dim)      up
    norm.weight                            (dim,)
    output.weight                          (vocab, dim)

`fuse_projections_` replaces, per layer, wq/wk/wv by one `attention.wqkv.weight` and w1/w3 by one
`feed_forward.w13.weight` (rows concatenated in that order); forward takes either form. Quantized
params (model/quant.py) fuse the same way, their scales along with their weights.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from .config import LlamaConfig
from .quant import concat_linears

__all__ = ["param_shapes", "init_params", "materialize_params", "check_params", "fuse_projections_"]

# Fused name -> the weights whose rows it concatenates, in order.
_FUSED = {
    "attention.wqkv.weight": ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
    "feed_forward.w13.weight": ("feed_forward.w1.weight", "feed_forward.w3.weight"),
}


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    q_dim = cfg.n_heads * cfg.head_dim
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    shapes = {"tok_embeddings.weight": (cfg.vocab_size, cfg.dim)}
    for i in range(cfg.n_layers):
        layer = f"layers.{i}"
        shapes.update({
            f"{layer}.attention_norm.weight": (cfg.dim,),
            f"{layer}.attention.wq.weight": (q_dim, cfg.dim),
            f"{layer}.attention.wk.weight": (kv_dim, cfg.dim),
            f"{layer}.attention.wv.weight": (kv_dim, cfg.dim),
            f"{layer}.attention.wo.weight": (cfg.dim, q_dim),
            f"{layer}.ffn_norm.weight": (cfg.dim,),
            f"{layer}.feed_forward.w1.weight": (cfg.ffn_dim, cfg.dim),
            f"{layer}.feed_forward.w2.weight": (cfg.dim, cfg.ffn_dim),
            f"{layer}.feed_forward.w3.weight": (cfg.ffn_dim, cfg.dim),
        })
    shapes["norm.weight"] = (cfg.dim,)
    shapes["output.weight"] = (cfg.vocab_size, cfg.dim)
    return shapes


def init_params(
    cfg: LlamaConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Random weights with the checkpoint's names and shapes.

    On device="meta" nothing is allocated; `materialize_params` fills the tensors in later, on
    the device they will live on, so 70B shapes never pass through host memory.
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"init_params: dtype must be a torch.dtype, got {dtype!r}")
    if not dtype.is_floating_point:
        # Random normal weights rounded to integers (or bools) would be mostly zeros.
        raise ValueError(f"init_params: dtype must be a floating-point dtype such as "
                         f"torch.bfloat16, got {dtype}")
    params = {name: torch.empty(shape, dtype=dtype, device="meta")
              for name, shape in param_shapes(cfg).items()}
    if torch.device(device).type == "meta":
        return params
    return materialize_params(params, cfg=cfg, seed=seed, device=device)


def materialize_params(
    params: dict[str, Tensor],
    *,
    cfg: LlamaConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Allocate and initialise every meta tensor of `params` on `device`; real tensors are kept.

    Each tensor draws from its own generator, seeded from `seed` and its name, so its values do
    not depend on which other tensors (or which shard of them) are materialised, nor in what order.
    Values do depend on the device type, since CPU and CUDA generators differ.
    """
    out = {}
    for name, tensor in params.items():
        if tensor.device.type != "meta":
            out[name] = tensor
            continue
        value = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        _init_tensor(name, value, cfg=cfg, seed=seed)
        out[name] = value
    return out


def _init_tensor(name: str, value: Tensor, *, cfg: LlamaConfig, seed: int) -> None:
    if name.endswith("norm.weight"):
        value.fill_(1.0)
        return
    generator = torch.Generator(device=value.device)
    generator.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    # std 1/sqrt(fan_in) keeps activations O(1) through any depth; the two projections that
    # write into the residual stream are scaled down further so it does not grow with depth.
    std = 1.0 if name == "tok_embeddings.weight" else value.shape[-1] ** -0.5
    if name.endswith(("wo.weight", "w2.weight")):
        std /= (2 * cfg.n_layers) ** 0.5
    # Draw in fp32 and round once, so low-precision weights are the rounded fp32 ones.
    sample = torch.empty(value.shape, dtype=torch.float32, device=value.device)
    sample.normal_(0.0, std, generator=generator)
    value.copy_(sample)


def check_params(
    params: dict[str, Tensor],
    cfg: LlamaConfig,
    *,
    dtype: torch.dtype | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise ValueError naming every missing, unexpected, mis-shaped or mis-typed tensor.

    `dtype` defaults to the dtype of tok_embeddings.weight; `shapes` to `param_shapes(cfg)`
    (tensor-parallel shards pass their own).
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> Tensor, got {type(params).__name__}")
    expected = param_shapes(cfg) if shapes is None else shapes
    if dtype is None:
        first = params.get("tok_embeddings.weight")
        dtype = first.dtype if isinstance(first, Tensor) else None
    problems = [f"missing {name}: expected shape {tuple(shape)} dtype {_dtype_name(dtype)}"
                for name, shape in expected.items() if name not in params]
    problems += [f"unexpected {name}: shape {_shape_of(value)}" for name, value in params.items()
                 if name not in expected]
    for name, shape in expected.items():
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, Tensor):
            problems.append(f"{name}: expected a Tensor, got {type(value).__name__}")
        elif tuple(value.shape) != tuple(shape) or (dtype is not None and value.dtype != dtype):
            problems.append(
                f"{name}: expected shape {tuple(shape)} dtype {_dtype_name(dtype)}, "
                f"got shape {tuple(value.shape)} dtype {_dtype_name(value.dtype)}"
            )
    if problems:
        raise ValueError(f"params do not match the config ({len(problems)} problems):\n  "
                         + "\n  ".join(problems))


def fuse_projections_(params: dict[str, Tensor], cfg: LlamaConfig) -> None:
    """Fuse each layer's q/k/v and gate/up projections in place: one matmul each instead of 3 and 2.

    Apply it last, after loading or tensor-parallel sharding (a rank fuses its own shard). Each
    layer's unfused weights leave the dict as its fused one enters, so peak memory grows by one
    layer's projections, not the model's: this is what lets a 70B shard fuse on its own GPU.
    """
    for i in range(cfg.n_layers):
        for fused, parts in _FUSED.items():
            names = [f"layers.{i}.{part}" for part in parts]
            missing = [name for name in names if name not in params]
            if missing:
                raise ValueError(f"fuse_projections_: params lack {', '.join(missing)} "
                                 "(already fused, or not a Llama param dict?)")
            concat_linears(params, [name.removesuffix(".weight") for name in names],
                           f"layers.{i}.{fused}".removesuffix(".weight"))


def _shape_of(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "any" if dtype is None else str(dtype).removeprefix("torch.")
