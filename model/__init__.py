"""The reference Llama-2: pure functions over a parameter dict keyed by Meta's checkpoint names."""

from .cache import KVCache, new_cache
from .config import LlamaConfig
from .generate import generate
from .llama import forward
from .params import check_params, init_params, materialize_params, param_shapes
from .reference import ReferenceLlama

__all__ = [
    "LlamaConfig",
    "init_params",
    "materialize_params",
    "check_params",
    "param_shapes",
    "KVCache",
    "new_cache",
    "forward",
    "generate",
    "ReferenceLlama",
]
