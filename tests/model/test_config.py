import dataclasses

import pytest

from fullgraph.model import LlamaConfig


@pytest.mark.parametrize(
    "name, dim, layers, heads, kv_heads, ffn_dim",
    [
        ("llama2-7b", 4096, 32, 32, 32, 11008),
        ("llama2-13b", 5120, 40, 40, 40, 13824),
        ("llama2-70b", 8192, 80, 64, 8, 28672),
    ],
)
def test_presets_match_meta(name, dim, layers, heads, kv_heads, ffn_dim):
    cfg = LlamaConfig.from_name(name)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (dim, layers, heads, kv_heads)
    assert cfg.ffn_dim == ffn_dim
    assert cfg.head_dim == 128
    assert cfg.vocab_size == 32000
    assert cfg.norm_eps == 1e-5 and cfg.rope_theta == 10000.0


def test_tiny_is_grouped_query():
    cfg = LlamaConfig.from_name("tiny")
    assert cfg.n_heads > cfg.n_kv_heads
    assert cfg.ffn_dim == 192


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown config name 'llama3'") as info:
        LlamaConfig.from_name("llama3")
    for name in ("llama2-7b", "llama2-13b", "llama2-70b", "tiny"):
        assert name in str(info.value)


def test_config_is_frozen():
    cfg = LlamaConfig.from_name("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 128


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 0}, "LlamaConfig.dim must be a positive int"),
        ({"n_heads": 5}, r"dim \(64\) is not divisible by n_heads \(5\)"),
        ({"n_kv_heads": 3}, r"n_heads \(4\) is not divisible by n_kv_heads \(3\)"),
        ({"vocab_size": 2.5}, "LlamaConfig.vocab_size must be a positive int"),
        ({"dim": 12, "n_heads": 4, "n_kv_heads": 4}, r"head_dim \(3\) must be even"),
    ],
)
def test_invalid_configs_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(LlamaConfig.from_name("tiny"), **change)
