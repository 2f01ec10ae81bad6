import collections
import contextlib
import json
import logging

import pytest
import torch

import zoo
from fullgraph.checks._compat import breaks as torch_breaks
from fullgraph.checks._compat import cudagraphs as torch_cudagraphs
from fullgraph.checks._compat import dynamo as torch_dynamo
from fullgraph.checks._compat import hooks as torch_hooks
from fullgraph.checks.watch import watch

BUILTIN = "Failed to trace builtin operator"


def where(brk):
    return [(frame.function, frame.lineno) for frame in brk.frames]


def compiled(fn):
    # dynamic=False: each new size fails a size guard, so every call below recompiles.
    return torch.compile(fn, backend="eager", dynamic=False)


def test_sees_breaks_and_recompiles_in_several_functions():
    helpers, item = compiled(zoo.calls_helpers), compiled(zoo.reads_item)
    with watch() as seen:
        for size in (2, 3):
            helpers(torch.ones(size))
        item(torch.ones(2))

    helper, scalar = seen.graph_breaks
    assert where(helper) == [("calls_helpers", zoo.line_of("outer call")),
                             ("_scale_and_log", zoo.line_of("middle call")),
                             ("_log", zoo.line_of("helper"))]
    assert helper.gb_type == BUILTIN and helper.count == 2  # one per compile of calls_helpers
    assert where(scalar) == [("reads_item", zoo.line_of("item"))] and scalar.count == 1
    recompiled = {torch_breaks.remove_resume_prefix(event.function.function) for event in seen.recompiles}
    assert {"calls_helpers", "_scale_and_log", "_log"} <= recompiled
    assert all(event.failures[0].kind == "size" for event in seen.recompiles)
    assert seen.compiles[0].function.function == "calls_helpers" and not seen.limit_hits
    assert seen.summary() == {"graph_count": seen.graph_count, "graph_breaks": 2,
                              "recompiles": len(seen.recompiles)}
    assert seen.graph_count >= 4


def test_counts_a_break_once_per_compile_whatever_the_nesting():
    net, loop = compiled(zoo.Net()), compiled(zoo.calls_helper_in_loop)
    with watch() as seen:
        for size in (2, 3):
            net(torch.ones(size, 8))
            loop(torch.ones(size))

    module, in_loop = seen.graph_breaks
    # Two methods named forward in one file: still one break, met once per compile.
    assert where(module) == [("forward", zoo.line_of("module call")), ("forward", zoo.line_of("module"))]
    assert module.count == 2
    assert in_loop.caused_by == BUILTIN and in_loop.count == 2


def test_disabled_calls_are_listed_but_not_counted():
    with watch() as seen:
        compiled(zoo.calls_disabled)(torch.ones(2))
    [brk] = seen.graph_breaks
    assert brk.disabled and seen.summary()["graph_breaks"] == 0


def test_is_live_inside_the_block_and_final_after():
    fn = compiled(zoo.prints)
    with watch() as seen:
        fn(torch.ones(2))
        assert len(seen.graph_breaks) == 1 and len(seen.compiles) >= 1
        inside = seen.to_dict()
    fn(torch.ones(3))  # a recompile after the block is not the block's
    assert seen.to_dict()["graph_breaks"] == inside["graph_breaks"]
    assert len(seen.compiles) == len(inside["compiles"]) and not seen.recompiles


def test_does_not_reset_dynamo():
    fn = compiled(zoo.clean)
    fn(torch.ones(2))
    with watch() as seen:
        fn(torch.ones(2))  # served from the cache compiled before the block
    assert seen.compiles == () and seen.graph_breaks == ()
    assert torch_dynamo.cache_entries(zoo.clean.__code__)  # nor after


def test_compile_times_run_parallel_to_compiles_and_the_dict_is_json():
    with watch() as seen:
        compiled(zoo.prints)(torch.ones(2))
    assert [t.compile_id for t in seen.compile_times] == [e.compile_id for e in seen.compiles]
    assert all(t.start >= 0 and t.seconds > 0 for t in seen.compile_times)
    data = json.loads(json.dumps(seen.to_dict()))
    assert data["graph_breaks"][0]["count"] == 1
    assert data["graph_breaks"][0]["frames"][0]["filename"].endswith("zoo.py")
    assert set(data) >= {"summary", "graph_breaks", "compiles", "compile_times", "cudagraph_skips"}


def test_keeps_the_bytecode_dynamo_produced_for_each_break():
    with watch() as seen:
        compiled(zoo.prints)(torch.ones(2))
    [brk] = seen.graph_breaks
    [entry] = seen.transformed_code(brk)
    assert entry.code.co_name == "prints" and entry.code is not zoo.prints.__code__
    assert entry.compile_id == seen.first_compile(brk) == seen.compiles[0].compile_id


def test_the_bytecode_of_a_break_is_from_the_compile_that_met_it_in_a_shared_wrapper():
    # Both functions run through one decorator's wrapper: one code object, whose cache holds an
    # entry for each, the one used last first. The break is in the first function's.
    with watch() as seen:
        compiled(zoo.wrapped_prints)(torch.ones(2))
        for _ in range(2):
            compiled(zoo.wrapped_adds)(torch.ones(2))
    [brk] = seen.graph_breaks
    first, other = seen.transformed_code(brk)
    assert first.compile_id == seen.first_compile(brk) == seen.compiles[0].compile_id
    assert other.compile_id == next(event.compile_id for event in seen.recompiles)
    # The break's compile handed dynamo's graph nothing: its bytecode calls no compiled graph.
    assert not _calls_a_graph(first.code) and _calls_a_graph(other.code)


def _calls_a_graph(code):
    return any(name.startswith("__compiled_fn") for name in code.co_names)


def test_hears_cudagraph_skips_logged_or_only_counted():
    from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

    logger = logging.getLogger(torch_cudagraphs.CUDAGRAPH_LOGGER)
    handlers = list(logger.handlers)
    with watch() as seen:
        log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (1 instances)")
        torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] += 1  # a CPU graph's silent skip
    assert seen.cudagraph_skip_count == 2
    assert seen.cudagraph_skips[0] == "skipping cudagraphs due to mutated inputs (1 instances)"
    assert seen.cudagraph_skips[1].startswith("1 more skipped without a logged reason")
    assert logger.handlers == handlers


def _skipping_backend(gm, example_inputs):
    # As inductor does for a graph on a non-CUDA device under mode="reduce-overhead".
    torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] += 1
    return gm.forward


def test_counts_graphs_and_skips_when_torch_counters_are_cleared():
    # torch._dynamo.test_case.TestCase clears the counters in setUp and tearDown.
    counters = torch._dynamo.utils.counters
    with watch() as seen:
        compiled(zoo.prints)(torch.ones(2))  # a graph either side of the print
        counters.clear()
        torch.compile(zoo.clean, backend=_skipping_backend)(torch.ones(2))
        counters.clear()
    assert (seen.graph_count, seen.cudagraph_skip_count) == (3, 1)
    assert seen.summary()["graph_count"] == 3


def test_leaves_torch_counters_plain_and_counting():
    counters = torch._dynamo.utils.counters
    with watch():
        with watch() as inner:
            compiled(zoo.clean)(torch.ones(2))
        counters.clear()
    assert inner.graph_count == 1
    assert counters.default_factory is collections.Counter
    assert all(type(group) is collections.Counter for group in counters.values())
    compiled(zoo.clean)(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == 1


def _torch_state():
    loggers = {logger.name: (logger.level, logger.propagate, list(logger.handlers))
               for logger in torch_hooks.torch_loggers()}
    log_state = torch_hooks.get_log_state()
    return (torch._dynamo.config.get_config_copy(), torch_dynamo.get_stance(), loggers,
            dict(log_state.log_qname_to_level), set(log_state.artifact_names))


@pytest.mark.parametrize("fails", [False, True], ids=["pass", "fail"])
def test_leaves_torch_state_as_it_found_it(fails):
    fn = compiled(zoo.prints)
    before = _torch_state()
    with pytest.raises(RuntimeError, match="inside") if fails else contextlib.nullcontext():
        with watch() as seen:
            torch._dynamo.config.recompile_limit = 3
            torch.compiler.set_stance("force_eager")
            torch.compiler.set_stance("default")
            torch._logging.set_logs(graph_breaks=True)
            logging.getLogger(torch_hooks.DYNAMO_LOGGER).addHandler(logging.NullHandler())
            fn(torch.ones(2))
            if fails:
                raise RuntimeError("inside")
    assert _torch_state() == before
    assert seen.dynamo_config == {"recompile_limit": 3}  # as the block left it
    assert len(seen.graph_breaks) == 1

