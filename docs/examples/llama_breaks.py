import torch
import torch.nn.functional as F
from torch import nn

from fullgraph.checks import (assert_no_graph_breaks, find_graph_breaks, recompile_budget,
                              assert_recompiles_at_most)
from fullgraph.model import LlamaConfig, init_params, forward
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
