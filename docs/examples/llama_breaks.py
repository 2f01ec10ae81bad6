import torch
import torch.nn.functional as F
from torch import nn

from fullgraph.checks import (assert_no_graph_breaks, find_graph_breaks, recompile_budget,
                              assert_recompiles_at_most)
from fullgraph.model import LlamaConfig, init_params, forward, new_paged_cache
from fullgraph.model.generate import decode_step
from fullgraph.model.paged import check_paged_inputs
from fullgraph.model.reference import apply_rotary_emb, precompute_freqs_cis


def complex_rope(xq, xk, freqs_cis):
    return apply_rotary_emb(xq, xk, freqs_cis)


def checked_all_reduce(x):
    assert x.abs().max() < 1e4, "activation blew up"   # a data-dependent assert
    return x * 2


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x * self.calls


def attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def paged_decode(params, token, positions, cache, table, cfg):
    return decode_step(params, token, positions, cache, cfg=cfg, block_table=table,
                       sdpa_backend="auto", temperature=0.0, top_k=None)


section = __import__("sys").argv[1]
if section == "rope":
    xq, xk = torch.randn(1, 8, 4, 16), torch.randn(1, 8, 4, 16)
    print(find_graph_breaks(complex_rope, xq, xk, precompute_freqs_cis(16, 8, 10000.0)))
elif section == "sdpa":
    cfg = LlamaConfig.from_name("tiny")
    print(find_graph_breaks(forward, init_params(cfg), torch.zeros(1, 8, dtype=torch.long), cfg=cfg,
                            sdpa_backend="math"))
elif section == "assert":
    assert_no_graph_breaks(checked_all_reduce, torch.ones(4))
elif section == "module":
    model = Counter()
    compiled = torch.compile(model, backend="eager")
    with recompile_budget(1):
        for _ in range(4):
            compiled(torch.ones(2))
elif section == "static":
    assert_recompiles_at_most(attention, [torch.randn(1, 4, n, 16).expand(3, -1, -1, -1).unbind(0)
                                          for n in range(16, 30)], 1, dynamic=False)
elif section == "paged":
    cfg = LlamaConfig.from_name("tiny")
    cache = new_paged_cache(cfg, num_blocks=17, block_size=4)
    table = (torch.randperm(16) + 1).view(2, 8).int()
    print(find_graph_breaks(check_paged_inputs, cache, table, torch.tensor([[5], [9]])))
    # A table trimmed to the longest sequence's pages: 3, 4, then 5 pages wide.
    calls = [(init_params(cfg), torch.tensor([[3], [4]]), torch.tensor([[n - 1], [n - 2]]), cache,
              table[:, : -(-n // 4)], cfg) for n in (9, 13, 17)]
    with torch.inference_mode():
        assert_recompiles_at_most(paged_decode, calls, 0)
