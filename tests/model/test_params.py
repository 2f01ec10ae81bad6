import dataclasses

import pytest
import torch

from fullgraph.model import (
    LlamaConfig,
    check_params,
    fuse_projections_,
    init_params,
    materialize_params,
    param_shapes,
)


def test_names_and_shapes_are_metas(tiny_cfg, tiny_params):
    assert set(tiny_params) == set(param_shapes(tiny_cfg))
    assert tiny_params["tok_embeddings.weight"].shape == (256, 64)
    assert tiny_params["layers.1.attention.wk.weight"].shape == (32, 64)  # 2 KV heads of 16
    assert tiny_params["layers.0.feed_forward.w2.weight"].shape == (64, 192)
    assert tiny_params["output.weight"].shape == (256, 64)
    assert torch.equal(tiny_params["norm.weight"], torch.ones(64))
    check_params(tiny_params, tiny_cfg)


def test_seed_makes_params_reproducible(tiny_cfg):
    a, b, c = (init_params(tiny_cfg, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["output.weight"], c["output.weight"])


def test_meta_init_then_materialize_equals_direct_init(tiny_cfg, tiny_params):
    meta = init_params(tiny_cfg, device="meta")
    assert all(t.is_meta for t in meta.values())
    real = materialize_params(meta, cfg=tiny_cfg, seed=0)
    assert all(torch.equal(real[k], tiny_params[k]) for k in tiny_params)


def test_70b_shapes_build_on_meta_without_memory():
    cfg = LlamaConfig.from_name("llama2-70b")
    params = init_params(cfg, device="meta", dtype=torch.bfloat16)
    count = sum(t.numel() for t in params.values())
    assert 68.9e9 < count < 69.1e9
    check_params(params, cfg)


def test_low_precision_weights_are_rounded_fp32_ones(tiny_cfg, tiny_params):
    bf16 = init_params(tiny_cfg, dtype=torch.bfloat16)
    assert torch.equal(bf16["output.weight"], tiny_params["output.weight"].to(torch.bfloat16))


def test_check_params_names_every_problem(tiny_cfg, tiny_params):
    params = dict(tiny_params)
    del params["layers.0.attention.wq.weight"]
    params["layers.0.attention.rope.freqs"] = torch.zeros(8)
    params["layers.1.feed_forward.w1.weight"] = torch.zeros(10, 64)
    params["norm.weight"] = torch.ones(64, dtype=torch.float16)
    with pytest.raises(ValueError) as info:
        check_params(params, tiny_cfg)
    message = str(info.value)
    assert "(4 problems)" in message
    assert "missing layers.0.attention.wq.weight: expected shape (64, 64) dtype float32" in message
    assert "unexpected layers.0.attention.rope.freqs: shape (8,)" in message
    assert ("layers.1.feed_forward.w1.weight: expected shape (192, 64) dtype float32, "
            "got shape (10, 64) dtype float32") in message
    assert "norm.weight: expected shape (64,) dtype float32, got shape (64,) dtype float16" in message


def test_check_params_rejects_a_config_mismatch(tiny_params, tiny_cfg):
    wider = dataclasses.replace(tiny_cfg, n_layers=3)
    with pytest.raises(ValueError, match="missing layers.2.attention_norm.weight"):
        check_params(tiny_params, wider)


def test_check_params_rejects_non_dict(tiny_cfg):
    with pytest.raises(TypeError, match="params must be a dict"):
        check_params([torch.zeros(1)], tiny_cfg)


def test_fusing_concatenates_projections_in_place(tiny_cfg, tiny_params):
    fused = dict(tiny_params)
    fuse_projections_(fused, tiny_cfg)
    assert set(fused) == set(tiny_params) - {
        f"layers.{i}.{part}.weight" for i in range(2)
        for part in ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
    } | {f"layers.{i}.{fused}.weight" for i in range(2) for fused in ("attention.wqkv", "feed_forward.w13")}
    wqkv = fused["layers.1.attention.wqkv.weight"]
    assert wqkv.shape == (64 + 32 + 32, 64)
    assert torch.equal(wqkv[64:96], tiny_params["layers.1.attention.wk.weight"])
    assert torch.equal(fused["layers.0.feed_forward.w13.weight"][192:], tiny_params["layers.0.feed_forward.w3.weight"])


def test_fusing_twice_names_the_missing_weights(tiny_cfg, tiny_params):
    fuse_projections_(tiny_params, tiny_cfg)
    with pytest.raises(ValueError, match=r"params lack layers\.0\.attention\.wq\.weight, "
                                         r"layers\.0\.attention\.wk\.weight.*already fused"):
        fuse_projections_(tiny_params, tiny_cfg)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_a_non_floating_dtype_is_refused(tiny_cfg, dtype):
    with pytest.raises(ValueError, match=f"init_params: dtype must be a floating-point dtype .*, "
                                         f"got {dtype}"):
        init_params(tiny_cfg, dtype=dtype)
    with pytest.raises(TypeError, match="init_params: dtype must be a torch.dtype, got 'float32'"):
        init_params(tiny_cfg, dtype="float32")
