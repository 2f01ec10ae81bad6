import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recompile_zoo as zoo
from fullgraph.checks.recompiles import RecompileBudgetError, assert_recompiles_at_most
from fullgraph.checks.shapes import Dim, assert_dims, dim_report, dim_sizes, sweep_shapes
from fullgraph.model import LlamaConfig, forward, init_params, new_cache

CFG = LlamaConfig.from_name("tiny")
# Module level, not a fixture: hypothesis runs many examples per test, and the params are
# never written.
PARAMS = init_params(CFG, seed=0)

BATCH = Dim("batch", ("tokens", 0), *((f"cache.{kv}[{layer}]", 0) for kv in "kv" for layer in range(CFG.n_layers)))
SEQ = Dim("seq", ("tokens", 1), ("input_pos", 0))
# Compiles of the 2-layer model take about a second each on a 2-core CPU: a few examples.
FEW = settings(max_examples=2, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


@torch.no_grad()
def model_step(params, tokens, input_pos, cache):
    """One forward with a cache: a prefill of S tokens, or a decode step when S is 1."""
    return forward(params, tokens, cfg=CFG, input_pos=input_pos, cache=cache)


def prompts(batch, seq):
    """One model_step call: `batch` prompts of `seq` tokens into a fresh cache."""
    tokens = torch.randint(CFG.vocab_size, (batch, seq))
    return PARAMS, tokens, torch.arange(seq), new_cache(CFG, batch_size=batch)


def with_budget(dim, max_recompiles):
    return Dim(dim.name, *dim.at, max_recompiles=max_recompiles)


lengths = st.lists(dim_sizes(seq=st.integers(2, 256)), min_size=2, max_size=3,
                   unique_by=lambda size: size["seq"])


# -- the reference model -------------------------------------------------------------------------

def test_decode_compiles_once_over_64_positions():
    cache = new_cache(CFG, batch_size=2)
    token = torch.zeros(2, 1, dtype=torch.long)
    # One token per step at a device-tensor position: the position is data, not a constant.
    steps = ((PARAMS, token, torch.tensor([pos]), cache) for pos in range(64))
    report = assert_recompiles_at_most(model_step, steps, 0)
    assert [event.kind for event in report.events] == ["compile"]


@FEW
@given(batch=st.integers(1, 8), sizes=lengths)
def test_prefill_over_prompt_lengths_costs_at_most_two_compiles(batch, sizes):
    report = sweep_shapes(model_step, lambda seq: prompts(batch, seq), sizes,
                          [BATCH, with_budget(SEQ, 1)])
    assert len(report.compiles.events) <= 2
    assert report["batch"].recompiles == ()


@FEW
@given(batch=st.integers(1, 8), sizes=lengths)
def test_prefill_with_the_sequence_marked_dynamic_compiles_once(batch, sizes):
    report = sweep_shapes(model_step, lambda seq: prompts(batch, seq), sizes, [BATCH, SEQ],
                          mark_dynamic=["seq"])
    assert len(report.compiles.events) == 1
    assert report["seq"].verdict == "dynamic from the first graph"


def test_a_one_token_prompt_is_a_graph_of_its_own():
    # torch specialises sizes 0 and 1 even where a dimension is marked dynamic: the one-token
    # prompt costs one recompile, and the report says why.
    report = dim_report(model_step, [prompts(2, 17), prompts(2, 1)], [BATCH, SEQ],
                        mark_dynamic=[SEQ])
    seq = report["seq"]
    assert [event.compile_id for event in seq.recompiles] == ["0/1"]
    assert seq.recompiles[0].failures[0].expected == ">= 2"
    assert seq.graphs == (("0/0", "dynamic (>= 2)"), ("0/1", "static 1"))
    assert seq.verdict == ("dynamic from the first graph; size 1 specialised (0/1): "
                           "a graph of its own")
    # With dynamic=None a one-token prompt that comes first is simply the static graph.
    first = dim_report(model_step, [prompts(2, 1), prompts(2, 17), prompts(2, 40), prompts(2, 1)],
                       [BATCH, SEQ])
    assert len(first.compiles.events) == 2


def test_the_batch_dimension_costs_one_recompile_and_goes_dynamic():
    report = assert_dims(model_step, [prompts(batch, 16) for batch in (2, 5, 8)],
                         [with_budget(BATCH, 1), SEQ])
    batch = report["batch"]
    assert batch.sizes == (2, 5, 8)
    assert [graph[1] for graph in batch.graphs] == ["static 2", "dynamic (>= 2)"]
    assert batch.verdict == "static in 0/0, dynamic from 0/1 (automatic dynamic)"
    assert report["seq"].recompiles == () and report.others == ()


# -- budgets and messages on small functions -----------------------------------------------------

ROWS = Dim("rows", ("x", 0))
COLS = Dim("cols", ("x", 1))


def test_a_dimension_over_budget_fails_with_its_recompiles():
    calls = [torch.ones(3, cols) for cols in (4, 5, 6)]
    with pytest.raises(RecompileBudgetError) as failure:
        assert_dims(zoo.rows_sum, calls, [ROWS, COLS], dynamic=False)
    message = str(failure.value)
    assert message.startswith("cols cost 2 recompiles, more than its budget of 0\n")
    assert "  1. dimension cols (x.size()[1]): 2 recompiles, budget 0" in message
    assert "sizes seen: 4, 5, 6" in message
    assert "static in every graph: each size compiled on its own" in message
    rows_sum = f"tests/checks/{zoo.SOURCE.name}:{zoo.line_of('rows-sum')} in rows_sum"
    assert f"recompile 0/1 at {rows_sum}:" in message
    assert "size guard on x.size()[1]: expected 4, actual 5 (entry 0/0)" in message
    assert failure.value.report["rows"].recompiles == ()


def test_recompiles_charged_to_no_dimension_have_their_own_budget():
    calls = [torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64)]
    with pytest.raises(RecompileBudgetError, match="1 recompile charged to no dimension"):
        assert_dims(zoo.rows_sum, calls, [ROWS])
    report = assert_dims(zoo.rows_sum, calls, [ROWS], max_other_recompiles=1)
    assert [event.failures[0].kind for event in report.others] == ["dtype"]


def test_the_recompile_limit_fails_whatever_the_budgets():
    calls = [torch.ones(2, cols) for cols in range(2, 7)]
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(RecompileBudgetError, match="hit torch._dynamo.config.recompile_limit"):
            assert_dims(zoo.rows_sum, calls, [with_budget(COLS, 100)], dynamic=False)


def test_a_dimension_on_an_nn_module_and_through_a_wrapper():
    model = zoo.MLP()
    report = assert_dims(model, [torch.ones(b, 8) for b in (2, 3, 4)], [with_budget(ROWS, 1)])
    assert report["rows"].verdict == "static in 0/0, dynamic from 0/1 (automatic dynamic)"
    # torch.no_grad wraps the function: dynamo compiles the wrapper and names arguments args[i].
    wrapped = torch.no_grad()(zoo.rows_sum)
    report = assert_dims(wrapped, [torch.ones(b, 8) for b in (2, 3)], [with_budget(ROWS, 1)])
    assert [event.compile_id for event in report["rows"].recompiles] == ["0/1"]
    assert "rows: 1 recompile (budget 1)" in str(report)


# -- misuse --------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: Dim("", ("x", 0)), TypeError, "name must be a non-empty str"),
    (lambda: Dim("rows"), ValueError, "needs at least one"),
    (lambda: Dim("rows", "x"), TypeError, r"\(argument path, axis\) tuple"),
    (lambda: Dim("rows", ("x y", 0)), ValueError, "not an argument path"),
    (lambda: Dim("rows", ("x", -1)), ValueError, "axis -1 of x must be >= 0"),
    (lambda: Dim("rows", ("x", 0), max_recompiles=-1), ValueError, "max_recompiles must be >= 0"),
])
def test_dim_misuse_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("dims, options, error, match", [
    ([Dim("rows", ("y", 0))], {}, ValueError, "'y' is not an argument of rows_sum"),
    ([Dim("rows", ("x", 5))], {}, ValueError, "x has 2 dimensions, no axis 5"),
    ([ROWS, ROWS], {}, ValueError, "dims has repeated names"),
    (ROWS, {}, TypeError, "dims must be a sequence of Dim"),
    ([ROWS], {"mark_dynamic": ["cols"]}, ValueError, "mark_dynamic names 'cols'"),
    ([ROWS], {"max_other_recompiles": 1.5}, TypeError, "max_other_recompiles must be an int"),
])
def test_assert_dims_misuse_names_the_argument(dims, options, error, match):
    with pytest.raises(error, match=match):
        assert_dims(zoo.rows_sum, [torch.ones(2, 3)], dims, **options)


def test_dim_sizes_draws_named_sizes_and_rejects_what_is_not_a_strategy():
    @settings(max_examples=5)
    @given(size=dim_sizes(batch=st.integers(1, 8), seq=16))
    def check(size):
        assert set(size) == {"batch", "seq"} and 1 <= size["batch"] <= 8 and size["seq"] == 16

    check()
    with pytest.raises(TypeError, match="batch must be a hypothesis strategy or an int"):
        dim_sizes(batch=[1, 2])
    with pytest.raises(TypeError, match="needs at least one dimension"):
        dim_sizes()
    with pytest.raises(TypeError, match="got one dict"):
        sweep_shapes(zoo.rows_sum, lambda rows: torch.ones(rows, 2), {"rows": 2})


def test_size_oblivious_shapes_cover_one_token_prompts_in_the_same_graph():
    # The fix for the one-token graph above: with backed_size_oblivious, dynamo stops
    # specialising size 1, and prompt lengths 1..256 share one graph.
    patch = torch.fx.experimental._config.patch(backed_size_oblivious=True)
    with patch:
        report = dim_report(model_step, [prompts(2, seq) for seq in (1, 2, 17, 256)], [BATCH, SEQ],
                            mark_dynamic=[SEQ])
    assert len(report.compiles.events) == 1
    assert report["seq"].recompiles == ()
