"""Llama-2 hyper-parameters, with the exact presets Meta published."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["LlamaConfig"]


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    # Meta's two knobs for the feed-forward width; `ffn_dim` derives the width from them.
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                     "max_seq_len", "max_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig.dim ({self.dim}) is not divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig.n_heads ({self.n_heads}) is not divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig head_dim ({self.head_dim}) must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        # Exactly Meta's FeedForward: 2/3 of 4*dim, scaled, rounded up to a multiple.
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_name(cls, name: str) -> LlamaConfig:
        try:
            return PRESETS[name]
        except KeyError:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown config name {name!r}; known names: {known}") from None

    @staticmethod
    def names() -> list[str]:
        return sorted(PRESETS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, LlamaConfig] = {
    "llama2-7b": LlamaConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000),
    "llama2-13b": LlamaConfig(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000),
    "llama2-70b": LlamaConfig(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
        multiple_of=4096, ffn_dim_multiplier=1.3,
    ),
    # Small enough for a 2-core CPU, yet grouped-query (2 query heads per KV head) like 70B.
    "tiny": LlamaConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
        multiple_of=32, max_seq_len=512, max_batch_size=8,
    ),
}
