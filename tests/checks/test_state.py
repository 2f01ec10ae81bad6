"""Every checker that compiles leaves torch's counters as it found them, pass or fail, and one
refused for a bad argument refuses before it resets dynamo: the refusal costs the caller nothing."""

import contextlib

import pytest
import torch
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import recompile_zoo
import zoo
from fullgraph.checks import (
    Dim,
    assert_dims,
    assert_grad_modes,
    assert_no_graph_breaks,
    assert_recompiles_at_most,
    assert_sdpa_safe,
    find_collectives,
    find_graph_breaks,
    grad_mode_matrix,
    sdpa_matrix,
    sweep_shapes,
)


def make_qkv(batch, seq):
    generator = torch.Generator().manual_seed(seq)
    return tuple(torch.randn(batch, 2, seq, 8, generator=generator) for _ in range(3))


def attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attend_and_print(q, k, v):
    print("attending")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def make_loss_inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, generator=generator), torch.randn(3, 5, generator=generator).requires_grad_()


def loss(x, w):
    return (x @ w).pow(2).sum()


def loss_that_prints_without_grad(x, w):
    if not torch.is_grad_enabled():
        print("evaluating")
    return (x @ w).pow(2).sum()


def all_reduce(x):
    return funcol.all_reduce(x * 2, "sum", group=torch.distributed.group.WORLD)


def all_reduce_then_raise(x):
    y = funcol.all_reduce(x * 2, "sum", group=torch.distributed.group.WORLD) + 1
    raise RuntimeError(f"failed after {y.shape}")


SIZES = dict(backends=("math",), placements=("outside",), sizes=((2, 8), (2, 12)))

# (passing call, failing call) of every checker that compiles internally.
CHECKERS = {
    "find_graph_breaks": (
        lambda: find_graph_breaks(zoo.clean, torch.ones(3)),
        lambda: assert_no_graph_breaks(zoo.prints, torch.ones(3))),
    "assert_recompiles_at_most": (
        lambda: assert_recompiles_at_most(recompile_zoo.scale, [torch.ones(2), torch.ones(3)], 1),
        lambda: assert_recompiles_at_most(recompile_zoo.scale, [torch.ones(2), torch.ones(3)], 0,
                                          dynamic=False)),
    "assert_dims": (
        lambda: assert_dims(recompile_zoo.scale, [torch.ones(2), torch.ones(3)],
                            [Dim("n", ("x", 0), max_recompiles=1)]),
        lambda: assert_dims(recompile_zoo.scale, [torch.ones(2), torch.ones(3), torch.ones(4)],
                            [Dim("n", ("x", 0))], dynamic=False)),
    "assert_sdpa_safe": (
        lambda: assert_sdpa_safe(attend, make_qkv, **SIZES),
        lambda: assert_sdpa_safe(attend_and_print, make_qkv, **SIZES)),
    "assert_grad_modes": (
        lambda: assert_grad_modes(loss, make_loss_inputs),
        lambda: assert_grad_modes(loss_that_prints_without_grad, make_loss_inputs)),
    "find_collectives": (
        lambda: find_collectives(all_reduce, torch.ones(4), world_size=2),
        lambda: find_collectives(all_reduce_then_raise, torch.ones(4), world_size=2)),
}


def _counts():
    return {key: dict(values) for key, values in counters.items()}


@pytest.fixture
def users_compile():
    """A function the user compiled before the checker ran: it fills torch's counters, and its
    compile counter tells whether dynamo kept it compiled."""
    counter = CompileCounter()
    compiled = torch.compile(lambda x: torch.relu(x) + 1, backend=counter)
    compiled(torch.ones(2))
    assert counter.frame_count == 1 and counters["stats"]["unique_graphs"] >= 1
    return compiled, counter


@pytest.mark.parametrize("outcome", ["pass", "fail"])
@pytest.mark.parametrize("checker", list(CHECKERS))
def test_a_checker_leaves_torch_counters_as_it_found_them(checker, outcome, users_compile):
    before = _counts()
    call = CHECKERS[checker][outcome == "fail"]
    with pytest.raises(AssertionError) if outcome == "fail" and checker != "find_collectives" \
            else contextlib.nullcontext():
        report = call()
    if checker == "find_collectives":
        assert report.ranks[0].status == ("failed" if outcome == "fail" else "ok")
    assert _counts() == before


@pytest.mark.parametrize("call, match", [
    (lambda: assert_recompiles_at_most(recompile_zoo.scale, [], 0), "inputs is empty"),
    (lambda: assert_recompiles_at_most(recompile_zoo.scale, [torch.ones(2)], 0, backend="nope"),
     r"assert_recompiles_at_most: backend must be one of \[.*'eager'.*\], got 'nope'"),
    (lambda: assert_dims(recompile_zoo.scale, [torch.ones(2)], [Dim("n", ("y", 0))]),
     r"Dim 'n': 'y' is not an argument of scale\(x\)"),
    (lambda: assert_dims(recompile_zoo.scale, [torch.ones(2)], [Dim("n", ("x", 0))], backend="nope"),
     r"dim_report: backend must be one of \[.*\], got 'nope'"),
    (lambda: sweep_shapes(recompile_zoo.scale, lambda n: torch.ones(n), [], [Dim("n", ("x", 0))]),
     "inputs is empty"),
    (lambda: find_graph_breaks(zoo.clean, torch.ones(2), backend="nope"),
     r"find_graph_breaks: backend must be one of \[.*\], got 'nope'"),
    (lambda: sdpa_matrix(attend, make_qkv, backend="nope", **SIZES),
     r"sdpa_matrix: backend must be one of \[.*\], got 'nope'"),
    (lambda: grad_mode_matrix(loss, make_loss_inputs, backend="nope"),
     r"grad_mode_matrix: backend must be one of \[.*\], got 'nope'"),
    (lambda: find_collectives(all_reduce, torch.ones(4), world_size=2, backend="nope"),
     r"find_collectives: backend must be one of \[.*\], got 'nope'"),
], ids=["empty inputs", "recompiles backend", "dim path", "dims backend", "no sizes",
        "graph breaks backend", "sdpa backend", "grad modes backend", "collectives backend"])
def test_a_refused_call_leaves_dynamo_cache_and_counters_untouched(call, match, users_compile):
    compiled, counter = users_compile
    before = _counts()
    with pytest.raises(ValueError, match=match):
        call()
    assert _counts() == before
    compiled(torch.ones(2))
    assert counter.frame_count == 1  # still compiled: nothing reset it
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(torch.ones(2))
