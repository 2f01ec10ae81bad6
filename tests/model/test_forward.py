import dataclasses

import pytest
import torch

from fullgraph.checks.parity import LOGIT_TOLERANCES, ParityError, assert_parity, logit_tolerance
from fullgraph.model import ReferenceLlama, forward, fuse_projections_, init_params, new_cache

pytestmark = pytest.mark.usefixtures("highest_precision")


def _tokens(cfg, batch, seq, seed=0):
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_forward_matches_the_reference_model(tiny_cfg, kv_heads):
    cfg = dataclasses.replace(tiny_cfg, n_kv_heads=kv_heads)
    params = init_params(cfg, seed=kv_heads)
    tokens = _tokens(cfg, 3, 37)
    expected = ReferenceLlama.from_params(params, cfg)(tokens)
    torch.testing.assert_close(forward(params, tokens, cfg=cfg), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("variant", ["fused projections", "flex attention"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_variants_match_the_reference_model_with_and_without_a_cache(tiny_cfg, kv_heads, variant):
    cfg = dataclasses.replace(tiny_cfg, n_kv_heads=kv_heads)
    params = init_params(cfg, seed=kv_heads)
    reference = ReferenceLlama.from_params(params, cfg)
    if variant == "fused projections":
        fuse_projections_(params, cfg)
    options = dict(cfg=cfg, sdpa_backend="flex" if variant == "flex attention" else "auto")
    tokens = _tokens(cfg, 2, 12)
    torch.testing.assert_close(forward(params, tokens, **options), reference(tokens), atol=1e-5, rtol=1e-5)
    reference.setup_cache(batch_size=2)
    cache = new_cache(cfg, batch_size=2)
    for start, stop in [(0, 5), (5, 6), (6, 12)]:
        got = forward(params, tokens[:, start:stop], cache=cache, input_pos=torch.arange(start, stop),
                      **options)
        torch.testing.assert_close(got, reference(tokens[:, start:stop], start), atol=1e-5, rtol=1e-5)


def test_reference_model_is_not_trivially_equal(tiny_cfg, tiny_params):
    # Parity only means something if a wrong weight shows: swap two heads' rows of wq.
    tokens = _tokens(tiny_cfg, 1, 16)
    broken = dict(tiny_params)
    wq = broken["layers.0.attention.wq.weight"]
    broken["layers.0.attention.wq.weight"] = torch.cat([wq[16:32], wq[:16], wq[32:]])
    expected = ReferenceLlama.from_params(tiny_params, tiny_cfg)(tokens)
    assert (forward(broken, tokens, cfg=tiny_cfg) - expected).abs().max() > 1e-3


def test_cached_decode_matches_full_recompute(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 40)
    full = forward(tiny_params, tokens, cfg=tiny_cfg)
    cache = new_cache(tiny_cfg, batch_size=2)
    steps = [forward(tiny_params, tokens[:, :8], cfg=tiny_cfg, cache=cache, input_pos=torch.arange(8))]
    for pos in range(8, 40):
        steps.append(forward(tiny_params, tokens[:, pos: pos + 1], cfg=tiny_cfg, cache=cache,
                             input_pos=torch.tensor([pos])))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cached_decode_matches_the_reference_models_cache(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 20)
    reference = ReferenceLlama.from_params(tiny_params, tiny_cfg)
    reference.setup_cache(batch_size=2)
    cache = new_cache(tiny_cfg, batch_size=2)
    for start, stop in [(0, 5), (5, 6), (6, 7), (7, 20)]:
        got = forward(tiny_params, tokens[:, start:stop], cfg=tiny_cfg, cache=cache,
                      input_pos=torch.arange(start, stop))
        torch.testing.assert_close(got, reference(tokens[:, start:stop], start), atol=1e-5, rtol=1e-5)


def test_cache_is_the_only_thing_mutated(tiny_cfg, tiny_params):
    before = {k: v.clone() for k, v in tiny_params.items()}
    cache = new_cache(tiny_cfg, batch_size=1)
    forward(tiny_params, _tokens(tiny_cfg, 1, 6), cfg=tiny_cfg, cache=cache, input_pos=torch.arange(6))
    assert all(torch.equal(before[k], tiny_params[k]) for k in before)
    for k in cache.tensors():
        assert (k[:, :, :6].abs().sum(-1) > 0).all() and not k[:, :, 6:].any()


def test_cache_is_contiguous_and_preallocated(tiny_cfg):
    cache = new_cache(tiny_cfg, batch_size=3, dtype=torch.bfloat16)
    assert len(cache.k) == len(cache.v) == 2
    for tensor in cache.tensors():
        assert tensor.shape == (3, 2, 512, 16) and tensor.dtype == torch.bfloat16
        assert tensor.is_contiguous()
    assert len({t.untyped_storage().data_ptr() for t in cache.tensors()}) == 4  # no shared storage


def test_new_cache_rejects_bad_sizes(tiny_cfg):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        new_cache(tiny_cfg, batch_size=0)


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_sdpa_backends_agree(tiny_cfg, tiny_params, backend):
    tokens = _tokens(tiny_cfg, 2, 24)
    expected = forward(tiny_params, tokens, cfg=tiny_cfg)
    got = forward(tiny_params, tokens, cfg=tiny_cfg, sdpa_backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_bad_arguments_are_named(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 4)
    with pytest.raises(ValueError, match="sdpa_backend must be one of"):
        forward(tiny_params, tokens, cfg=tiny_cfg, sdpa_backend="fast")
    with pytest.raises(ValueError, match=r"tokens must be \(batch, seq\)"):
        forward(tiny_params, tokens[0], cfg=tiny_cfg)
    with pytest.raises(ValueError, match="cache holds 1 sequences but tokens has 2"):
        forward(tiny_params, tokens, cfg=tiny_cfg, cache=new_cache(tiny_cfg, batch_size=1))


@pytest.mark.parametrize("bad_id", [256, 1000, -1])
def test_a_token_id_outside_the_vocabulary_is_named_with_vocab_size(tiny_cfg, tiny_params, bad_id):
    tokens = _tokens(tiny_cfg, 2, 4)
    tokens[1, 2] = bad_id
    lowest, highest = (bad_id, r"\d+") if bad_id < 0 else (r"\d+", bad_id)
    with pytest.raises(ValueError, match=rf"tokens: ids must be in \[0, vocab_size=256\), "
                                         rf"got ids from {lowest} to {highest}$"):
        forward(tiny_params, tokens, cfg=tiny_cfg)


def test_float_tokens_are_named(tiny_cfg, tiny_params):
    with pytest.raises(TypeError, match="tokens must hold integer token ids .*, got torch.float32"):
        forward(tiny_params, _tokens(tiny_cfg, 2, 4).float(), cfg=tiny_cfg)


def test_a_position_past_the_cache_is_named_with_its_max_seq_len(tiny_cfg, tiny_params):
    cache = new_cache(tiny_cfg, batch_size=2, max_seq_len=8)
    tokens = _tokens(tiny_cfg, 2, 1)
    forward(tiny_params, tokens, cfg=tiny_cfg, cache=cache, input_pos=torch.tensor([7]))
    with pytest.raises(ValueError, match=r"input_pos: positions must be in \[0, the cache's "
                                         r"max_seq_len=8\), got 8 to 8"):
        forward(tiny_params, tokens, cfg=tiny_cfg, cache=cache, input_pos=torch.tensor([8]))
    # Without input_pos the positions are 0..S-1: a prompt longer than the cache.
    with pytest.raises(ValueError, match=r"max_seq_len=8\), got 0 to 8"):
        forward(tiny_params, _tokens(tiny_cfg, 2, 9), cfg=tiny_cfg, cache=cache)
    with pytest.raises(TypeError, match="input_pos must be int64 to index the cache, got torch.int32"):
        forward(tiny_params, tokens, cfg=tiny_cfg, cache=cache,
                input_pos=torch.tensor([3], dtype=torch.int32))


def test_int32_tokens_are_accepted(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 4)
    torch.testing.assert_close(forward(tiny_params, tokens.int(), cfg=tiny_cfg),
                               forward(tiny_params, tokens, cfg=tiny_cfg))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_precision_logits_within_the_documented_tolerance(tiny_cfg, dtype, seed):
    low = init_params(tiny_cfg, seed=seed, dtype=dtype)
    tokens = _tokens(tiny_cfg, 2, 64, seed=seed)
    expected = forward({k: v.float() for k, v in low.items()}, tokens, cfg=tiny_cfg)
    assert_parity(forward(low, tokens, cfg=tiny_cfg), expected, dtype=dtype)
    assert_parity(ReferenceLlama.from_params(low, tiny_cfg)(tokens), expected, dtype=dtype)


def test_tolerance_table_is_tight_enough_to_catch_a_bug(tiny_cfg):
    low = init_params(tiny_cfg, dtype=torch.bfloat16)
    tokens = _tokens(tiny_cfg, 2, 32)
    expected = forward({k: v.float() for k, v in low.items()}, tokens, cfg=tiny_cfg)
    # Dropping one layer's attention norm is a real bug; bf16 tolerance must not hide it.
    broken = dict(low, **{"layers.1.attention_norm.weight": low["layers.1.attention_norm.weight"] * 1.5})
    with pytest.raises(ParityError, match=r"parity failed at torch.bfloat16 \(atol=0.08, rtol=0.02\)"):
        assert_parity(forward(broken, tokens, cfg=tiny_cfg), expected, dtype=torch.bfloat16)
    assert set(LOGIT_TOLERANCES) == {torch.float32, torch.float16, torch.bfloat16}


def test_tolerance_grows_with_the_square_root_of_depth():
    assert logit_tolerance(torch.bfloat16) == LOGIT_TOLERANCES[torch.bfloat16]
    assert logit_tolerance(torch.bfloat16, depth=1) == LOGIT_TOLERANCES[torch.bfloat16]
    assert logit_tolerance(torch.bfloat16, depth=32) == pytest.approx((0.32, 0.08))
    expected = torch.zeros(4)
    off_by_3x = torch.tensor([0.0, 0.0, 0.0, 0.24])
    with pytest.raises(ParityError, match=r"atol=0.08, rtol=0.02"):
        assert_parity(off_by_3x, expected, dtype=torch.bfloat16)
    assert_parity(off_by_3x, expected, dtype=torch.bfloat16, depth=32)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        logit_tolerance(torch.bfloat16, depth=0)
    with pytest.raises(ValueError, match="dtype: no tolerance for torch.int8"):
        assert_parity(torch.zeros(1, dtype=torch.int8), torch.zeros(1, dtype=torch.int8))


def test_training_gradients_match_the_reference(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 16)
    params = {k: v.clone().requires_grad_() for k, v in tiny_params.items()}
    reference = ReferenceLlama.from_params(tiny_params, tiny_cfg)
    torch.nn.functional.cross_entropy(
        forward(params, tokens, cfg=tiny_cfg).flatten(0, 1), tokens.flatten()).backward()
    # The reference runs under inference_mode by design; use its modules directly for grads.
    with torch.enable_grad():
        logits = ReferenceLlama.forward.__wrapped__(reference, tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    reference_grads = dict(reference.named_parameters())
    for name, param in params.items():
        torch.testing.assert_close(param.grad, reference_grads[name].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_inductor_compiled_forward_matches_eager(tiny_cfg, tiny_params):
    tokens = _tokens(tiny_cfg, 2, 24)
    cache = new_cache(tiny_cfg, batch_size=2)
    eager_cache = new_cache(tiny_cfg, batch_size=2)
    compiled = torch.compile(forward, fullgraph=True, backend="inductor")
    pos = torch.arange(24)
    got = compiled(tiny_params, tokens, cfg=tiny_cfg, cache=cache, input_pos=pos)
    expected = forward(tiny_params, tokens, cfg=tiny_cfg, cache=eager_cache, input_pos=pos)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.tensors(), eager_cache.tensors(), atol=1e-5, rtol=1e-5)
