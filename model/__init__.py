"""The reference Llama-2: pure functions over a parameter dict keyed by Meta's checkpoint names."""

from .cache import KVCache, new_cache
from .config import LlamaConfig
from .generate import generate
from .llama import forward
from .loaders import CheckpointError, load_hf_checkpoint, load_meta_checkpoint
from .paged import PageAllocator, PagedKVCache, PoolFullError, new_paged_cache
from .params import check_params, fuse_projections_, init_params, materialize_params, param_shapes
from .reference import ReferenceLlama
from .tensor_parallel import init_shard, local_kv_heads, make_all_reduce, shard_params, shard_shapes
from .tokenizer import Tokenizer

__all__ = [
    "LlamaConfig",
    "init_params",
    "materialize_params",
    "check_params",
    "param_shapes",
    "fuse_projections_",
    "KVCache",
    "new_cache",
    "PagedKVCache",
    "new_paged_cache",
    "PageAllocator",
    "PoolFullError",
    "forward",
    "generate",
    "ReferenceLlama",
    "load_meta_checkpoint",
    "load_hf_checkpoint",
    "CheckpointError",
    "Tokenizer",
    "shard_params",
    "shard_shapes",
    "local_kv_heads",
    "init_shard",
    "make_all_reduce",
]
