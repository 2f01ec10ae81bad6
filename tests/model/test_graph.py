"""Zero graph breaks and one decode graph, asserted with torch's own tools.

The checkers in fullgraph.checks say more (where and why); these tests hold the model to the
same bar with nothing but torch._dynamo, so a checker bug cannot hide a model regression.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fullgraph.model import forward, fuse_projections_, new_cache
from fullgraph.model.generate import decode_step


def _explain(fn, *args, **kwargs):
    return torch._dynamo.explain(fn)(*args, **kwargs)


def _prefill(params, tokens, cache, cfg):
    return forward(params, tokens, cfg=cfg, cache=cache, input_pos=torch.arange(tokens.shape[1]))


def _training_loss(params, tokens, cfg):
    # Compiled with grad on, AOTAutograd traces the backward of this same graph; calling
    # .backward() inside the region would itself break it.
    logits = forward(params, tokens, cfg=cfg)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


@pytest.fixture
def tokens(tiny_cfg):
    return torch.randint(0, tiny_cfg.vocab_size, (2, 16))


def test_prefill_has_no_graph_breaks(tiny_cfg, tiny_params, tokens):
    cache = new_cache(tiny_cfg, batch_size=2)
    explained = _explain(_prefill, tiny_params, tokens, cache, tiny_cfg)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch.compile(_prefill, fullgraph=True, backend="eager")(tiny_params, tokens, cache, tiny_cfg)


@pytest.mark.parametrize("attention", ["auto", "flex"])
@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
def test_decode_has_no_graph_breaks(tiny_cfg, tiny_params, fused, attention):
    if fused:
        fuse_projections_(tiny_params, tiny_cfg)
    cache = new_cache(tiny_cfg, batch_size=2)
    args = (tiny_params, torch.tensor([[3], [4]]), torch.tensor([5]), cache)
    options = dict(cfg=tiny_cfg, sdpa_backend=attention, temperature=0.0, top_k=None)
    explained = _explain(decode_step, *args, **options)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch.compile(decode_step, fullgraph=True, backend="eager")(*args, **options)


def test_training_step_has_no_graph_breaks(tiny_cfg, tiny_params, tokens):
    params = {k: v.clone().requires_grad_() for k, v in tiny_params.items()}
    explained = _explain(_training_loss, params, tokens, tiny_cfg)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch.compile(_training_loss, fullgraph=True, backend="aot_eager")(params, tokens, tiny_cfg).backward()
    assert all(p.grad is not None for p in params.values())


@pytest.mark.parametrize("backend", ["math", "flash", "flex"])
def test_sdpa_backend_choice_does_not_break_the_graph(tiny_cfg, tiny_params, tokens, backend):
    explained = _explain(forward, tiny_params, tokens, cfg=tiny_cfg, sdpa_backend=backend)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


@pytest.mark.parametrize("attention", ["auto", "flex"])
def test_decode_compiles_once_for_64_positions(tiny_cfg, tiny_params, attention):
    counter = CompileCounter()
    step = torch.compile(decode_step, fullgraph=True, backend=counter)
    cache = new_cache(tiny_cfg, batch_size=2)
    token, input_pos = torch.tensor([[3], [4]]), torch.tensor([0])
    for _ in range(64):
        token = step(tiny_params, token, input_pos, cache, cfg=tiny_cfg, sdpa_backend=attention,
                     temperature=0.0, top_k=None).view(2, 1)
        input_pos += 1
    assert counter.frame_count == 1
    assert all(k[:, :, 63].any() and not k[:, :, 64].any() for k in cache.tensors())
