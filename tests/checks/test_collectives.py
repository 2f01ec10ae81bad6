"""The collectives checker: captured and uncaptured collectives, consistency across ranks, and
ranks that fail or hang.

Most tests run one rank in this process under torch's fake process group; the ones named
"gloo" launch two real ranks through run_collective_check (collective_targets.py holds what the
ranks run). The one that waits out a timeout uses 20 s.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

import collective_targets
from collective_targets import all_gather_single, reduce_scatter_single
from fullgraph.checks import (
    CapturedGraph,
    CollectiveError,
    CollectiveReport,
    RankReport,
    assert_collectives,
    find_collectives,
    run_collective_check,
)
from fullgraph.model import LlamaConfig, forward, init_params, new_cache
from fullgraph.model.tensor_parallel import (
    fake_process_group,
    local_kv_heads,
    make_all_reduce,
    shard_params,
)

TINY = LlamaConfig.from_name("tiny")
# 8 query heads over 2 KV heads: splits for 2 ranks and replicates KV heads for 4 and 8.
WIDE = dataclasses.replace(TINY, n_heads=8, n_kv_heads=2)
TARGETS = Path(collective_targets.__file__)


def _line(path: Path, text: str) -> int:
    """The number of the line of `path` that contains `text`."""
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1)
                if text in line)


def _here(text: str) -> str:
    return f"test_collectives.py:{_line(Path(__file__), text)}"


# -- one rank under the fake process group ------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_tp_forward_captures_two_all_reduces_per_layer(world_size):
    rank = world_size - 1
    with fake_process_group(world_size, rank=rank):
        shard = shard_params(init_params(WIDE), WIDE, world_size=world_size, rank=rank)
        cache = new_cache(WIDE, batch_size=2, max_seq_len=16,
                          n_kv_heads=local_kv_heads(WIDE, world_size=world_size))
        report = find_collectives(forward, shard, torch.randint(WIDE.vocab_size, (2, 5)),
                                  cfg=WIDE, input_pos=torch.arange(5), cache=cache,
                                  all_reduce=make_all_reduce())
    assert_collectives(report, expected={"all_reduce": 2 * WIDE.n_layers})
    [result] = report.ranks
    assert (report.function, report.process_group, report.world_size) == ("forward", "fake", world_size)
    assert (result.rank, result.status, len(result.graphs)) == (rank, "ok", 1)
    assert result.breaks == result.uncaptured == result.recompiles == ()
    assert result.sequence == ("all_reduce",) * 2 * WIDE.n_layers  # all of them ran in the graph
    # Each all-reduce is traced from the line of tensor_parallel.py that calls funcol.
    assert {site.function for site in result.graphs[0].sites} == {"all_reduce"}
    assert not dist.is_initialized()


def _every_functional_collective(x):
    group = dist.group.WORLD
    x = funcol.all_reduce(x, "sum", group)
    x = all_gather_single(x, 0, group)
    x = reduce_scatter_single(x, "sum", 0, group)
    x = funcol.all_to_all_single(x, None, None, group)
    dist.all_reduce(x)  # in place and synchronous: dynamo rewrites it to a functional one
    return x


def test_functional_and_in_place_collectives_are_captured_by_kind():
    report = find_collectives(_every_functional_collective, torch.ones(4), world_size=2)
    expected = {"all_reduce": 2, "all_gather_into_tensor": 1, "reduce_scatter_tensor": 1,
                "all_to_all_single": 1}
    assert_collectives(report, expected=expected)
    assert report.ranks[0].sequence == ("all_reduce", "all_gather_into_tensor",
                                        "reduce_scatter_tensor", "all_to_all_single", "all_reduce")


def _async_all_reduce(x):
    y = x * 2
    work = dist.all_reduce(y, async_op=True)  # async here
    work.wait()
    return y + 1


def test_an_async_collective_is_a_break_and_runs_outside_the_graph():
    report = find_collectives(_async_all_reduce, torch.ones(4), world_size=2)
    [result] = report.ranks
    [eager] = result.uncaptured
    assert (eager.kind, eager.op, eager.count) == ("all_reduce", "c10d::allreduce_", 1)
    assert f"{eager.frame.location()}".endswith(f"{_here('# async here')} in _async_all_reduce")
    assert result.breaks[0].gb_type == "async_op=True for distributed collectives"
    with pytest.raises(CollectiveError) as failure:
        assert_collectives(report)
    message = str(failure.value)
    assert message.startswith("1 collective ran outside the graph (limit 0); 2 graph breaks "
                              "(limit 0) in _async_all_reduce on rank 0 of 2 (fake)\n")
    assert (f"  1. rank 0: tests/checks/{_here('# async here')} in _async_all_reduce: all_reduce "
            "ran eagerly, outside every compiled graph\n"
            "       work = dist.all_reduce(y, async_op=True)  # async here\n"
            "       op c10d::allreduce_\n") in message
    assert (f"  2. rank 0: tests/checks/{_here('# async here')} in _async_all_reduce: graph break "
            "(collective): async_op=True for distributed collectives\n") in message
    assert "Hint: Call collectives through torch.distributed._functional_collectives" in message
    assert failure.value.report is report


@torch.compiler.disable
def _sum_eagerly(x):
    return funcol.all_reduce(x, "sum", dist.group.WORLD)  # disabled here


def _calls_a_disabled_collective(x):
    return _sum_eagerly(x * 2) + 1


def test_a_collective_behind_compiler_disable_is_uncaptured():
    report = find_collectives(_calls_a_disabled_collective, torch.ones(4), world_size=4, rank=3)
    [result] = report.ranks
    assert result.graph_break_count == 0 and result.breaks[0].disabled  # deliberate, not counted
    assert result.captured == {}
    with pytest.raises(CollectiveError, match=(
            rf"1 collective ran outside the graph \(limit 0\) in _calls_a_disabled_collective "
            rf"on rank 3 of 4 \(fake\)\n  1\. rank 3: tests/checks/{_here('# disabled here')} "
            r"in _sum_eagerly: all_reduce ran eagerly")):
        assert_collectives(report)


def test_unexpected_counts_name_the_graph_and_the_lines():
    report = find_collectives(_every_functional_collective, torch.ones(4), world_size=2)
    with pytest.raises(CollectiveError) as failure:
        assert_collectives(report, expected={"all_reduce": 3, "broadcast": 1},
                           msg="after sharding")
    message = str(failure.value)
    assert message.startswith("after sharding\n\nunexpected collective counts in "
                              "_every_functional_collective on rank 0 of 2 (fake)\n")
    assert ("  1. rank 0: the graphs capture all_reduce x2 (expected 3), broadcast x0 (expected 1), "
            "all_gather_into_tensor x1 (expected 0)") in message
    assert f"graph 0/0: 11 ops, all_reduce (tests/checks/{_here('x = funcol.all_reduce(x')}" in message


def _raises(x):
    return x * 2 + {}["missing"]


def test_an_exception_in_the_function_is_reported_not_raised():
    report = find_collectives(_raises, torch.ones(4), world_size=2)
    [result] = report.ranks
    assert (result.status, result.error) == ("failed", "KeyError: 'missing'")
    assert result.where.location().endswith(f"{_here('missing')} in _raises")
    with pytest.raises(CollectiveError, match=r"1 rank did not finish in _raises .*\n  1\. rank 0: "
                       rf"failed at tests/checks/{_here('missing')} in _raises: KeyError"):
        assert_collectives(report)


def test_an_initialised_group_is_used_and_torch_state_is_left_alone():
    config = torch._dynamo.config.get_config_copy()
    with fake_process_group(4, rank=2):
        report = find_collectives(_every_functional_collective, torch.ones(8))
        assert dist.is_initialized()  # the caller's group outlives the check
    assert (report.ranks[0].rank, report.world_size) == (2, 4)
    assert torch._dynamo.config.get_config_copy() == config
    assert torch._C._len_torch_dispatch_stack() == 0


def test_reports_round_trip_through_json():
    # Ranks send their reports to the launcher as JSON.
    report = find_collectives(_async_all_reduce, torch.ones(4), world_size=2)
    data = json.loads(json.dumps(report.ranks[0].to_dict()))
    assert RankReport.from_dict(data).to_dict() == data
    assert json.loads(json.dumps(report.to_dict()))["consistent"] is True


# -- assert_collectives on reports made by hand ----------------------------------------------------


def _graph(*collectives: str, signature: str = "s") -> CapturedGraph:
    return CapturedGraph("0/0", 10, collectives, (None,) * len(collectives), signature)


def _report(*ranks: RankReport) -> CollectiveReport:
    return CollectiveReport("step", "eager", "gloo", len(ranks), ranks)


def test_a_rank_that_stopped_early_agrees_if_it_did_the_same_so_far():
    done = RankReport(0, "ok", graphs=(_graph("all_reduce", "all_reduce"),),
                      sequence=("all_reduce", "all_reduce"))
    stopped = RankReport(1, "timed out", graphs=(_graph("all_reduce", "all_reduce"),),
                         sequence=("all_reduce",), error="timed out after 5 s")
    assert _report(done, stopped).consistent
    diverged = dataclasses.replace(stopped, sequence=("broadcast",))
    assert not _report(done, diverged).consistent


def test_graphs_that_differ_only_in_ops_pass_with_same_graphs_false():
    ranks = [RankReport(rank, "ok", graphs=(_graph("all_reduce", signature=str(rank)),),
                        sequence=("all_reduce",)) for rank in range(2)]
    with pytest.raises(CollectiveError, match=r"ranks compiled different graphs in step on 2 "
                                              r"ranks \(gloo\)\n  1\. the ranks compiled 2 different sets"):
        assert_collectives(_report(*ranks))
    assert_collectives(_report(*ranks), same_graphs=False)


def test_recompiles_over_the_limit_are_listed():
    rank = RankReport(0, "ok", recompiles=("0/1 of a.py:3 in step: size guard on x.size()[0]",))
    with pytest.raises(CollectiveError, match=r"1 recompile \(limit 0\) in step .*\n  1\. rank 0: "
                                              r"recompile 0/1 of a\.py:3 in step: size guard"):
        assert_collectives(_report(rank))
    assert_collectives(_report(rank), max_recompiles=1)


@pytest.mark.parametrize("call, error, match", [
    (lambda: find_collectives(_async_all_reduce, torch.ones(2), world_size=0), ValueError,
     "world_size must be >= 1, got 0"),
    (lambda: find_collectives(_async_all_reduce, torch.ones(2), world_size=2, rank=2), ValueError,
     r"rank must be an int in \[0, 2\), got 2"),
    (lambda: find_collectives(_async_all_reduce, torch.ones(2)), ValueError,
     "no process group is initialised; pass world_size=N"),
    (lambda: find_collectives(_async_all_reduce, world_size=2, backend="eagre"), ValueError,
     "backend must be one of"),
    (lambda: assert_collectives(_report(), expected={"allreduce": 1}), ValueError,
     "expected names an unknown collective 'allreduce'"),
    (lambda: assert_collectives(_report(), max_breaks=-1), ValueError, "max_breaks must be >= 0"),
    (lambda: assert_collectives("report"), TypeError, "report must be a CollectiveReport, got str"),
    (lambda: run_collective_check("collective_targets.tp_forward"), ValueError,
     "target must be 'module:function'"),
    (lambda: run_collective_check(lambda: None), TypeError, "top-level function"),
    (lambda: run_collective_check(collective_targets.tp_forward, backend=lambda gm, args: gm),
     TypeError, "backend must be a backend name"),
    (lambda: run_collective_check(collective_targets.tp_forward, timeout=0), ValueError,
     "timeout must be > 0"),
])
def test_misuse_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_fake_group_is_destroyed_and_leaves_no_excepthook_behind():
    excepthook = sys.excepthook
    find_collectives(_async_all_reduce, torch.ones(2), world_size=2)
    assert not dist.is_initialized() and sys.excepthook is excepthook


def test_a_fake_group_is_refused_while_another_is_up():
    with fake_process_group(2), pytest.raises(ValueError, match="already initialised"):
        find_collectives(_async_all_reduce, torch.ones(2), world_size=2)


# -- real ranks: two gloo processes ----------------------------------------------------------------


def test_gloo_ranks_run_the_tp_forward_consistently():
    report = run_collective_check(collective_targets.tp_forward, world_size=2, timeout=120)
    assert_collectives(report, expected={"all_reduce": 2 * TINY.n_layers})
    assert report.consistent and report.process_group == "gloo" and report.function == "forward"
    assert [rank.captured for rank in report.ranks] == [{"all_reduce": 4}] * 2


def test_gloo_ranks_that_branch_on_the_rank_hang_and_are_inconsistent():
    start = time.monotonic()
    report = run_collective_check("collective_targets:rank_dependent", timeout=20)
    assert time.monotonic() - start < 30
    # They deadlock, each waiting in a collective the other never calls; what each did before
    # it hung shows why.
    assert [(rank.status, rank.error, rank.sequence) for rank in report.ranks] == [
        ("timed out", "timed out after 20 s", ("all_reduce",)),
        ("timed out", "timed out after 20 s", ("all_gather_into_tensor",))]
    assert not report.consistent
    message = str(pytest.raises(CollectiveError, assert_collectives, report).value)
    assert ("  1. rank 0: timed out after 20 s at tests/checks/collective_targets.py:"
            f"{_line(TARGETS, 'def _sum_on_rank_0')} in _sum_on_rank_0_gather_elsewhere\n") in message
    assert "the last collective it started: all_gather_into_tensor (#1)" in message
    assert message.startswith("2 ranks did not finish; ranks disagree on the collective sequence; "
                              "ranks compiled different graphs in _sum_on_rank_0_gather_elsewhere "
                              "on 2 ranks (gloo)\n")
    assert ("the ranks ran 2 different collective sequences\n"
            "       rank 0 (until it stopped): all_reduce\n"
            "       rank 1 (until it stopped): all_gather_into_tensor\n") in message
    gather = f"tests/checks/collective_targets.py:{_line(TARGETS, 'return all_gather_single(')}"
    assert f"graph 0/0: 2 ops, all_gather_into_tensor ({gather} in " in message


def test_a_gloo_rank_that_raises_is_named_with_its_error():
    report = run_collective_check("collective_targets:raises_on_rank_1", timeout=60)
    # Rank 0 finishes its check, unless rank 1's failure stops it first on a loaded machine.
    assert report.ranks[0].status in ("ok", "stopped") and report.ranks[1].status == "failed"
    assert "RuntimeError: rank 1 has no shard" in report.ranks[1].detail  # the traceback
    raised = f"tests/checks/collective_targets.py:{_line(TARGETS, '# raises here')}"
    with pytest.raises(CollectiveError, match=(
            r"[12] ranks? did not finish in _scale on 2 ranks \(gloo\)\n(.*\n)*"
            rf"  \d\. rank 1: failed at {raised} in raises_on_rank_1: RuntimeError: rank 1 has no "
            r"shard\n       raise RuntimeError")):
        assert_collectives(report)


def test_a_gloo_rank_that_dies_is_named_and_the_others_are_stopped():
    start = time.monotonic()
    report = run_collective_check("collective_targets:exits_on_rank_1", timeout=60)
    assert time.monotonic() - start < 30  # stopped a few seconds after rank 1 died, not at 60 s
    stopped, crashed = report.ranks
    assert (crashed.status, crashed.error) == ("crashed", "exited with code 3 without a report")
    assert (stopped.status, stopped.error) == ("stopped", "stopped 5 s after rank 1 failed")
    assert stopped.where.location().endswith(
        f"collective_targets.py:{_line(TARGETS, '# stopped here')} in exits_on_rank_1")
    with pytest.raises(CollectiveError, match=r"2 ranks did not finish in exits_on_rank_1 on 2 "
                                              r"ranks \(gloo\)\n  1\. rank 0: stopped 5 s after"):
        assert_collectives(report)


@pytest.mark.gpu
def test_nccl_ranks_run_the_tp_forward_consistently():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    report = run_collective_check(collective_targets.tp_forward_cuda, dist_backend="nccl",
                                  timeout=300)
    assert_collectives(report, expected={"all_reduce": 2 * TINY.n_layers})
