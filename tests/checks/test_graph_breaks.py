"""find_graph_breaks and assert_no_graph_breaks against the known breaks in zoo.py, and the model.

Line numbers come from the `# break:` markers in zoo.py, never from literals.
"""

import contextlib
import json
import logging
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from fullgraph.checks import (
    CheckFailure,
    GraphBreakError,
    GraphBreakReport,
    assert_no_graph_breaks,
    find_graph_breaks,
)
from fullgraph.checks._compat import dynamo as torch_dynamo
from fullgraph.checks._compat import hooks as torch_hooks
from fullgraph.checks._message import display_path
from fullgraph.model import forward, new_cache

BUILTIN = "Failed to trace builtin operator"
ITEM = "Unsupported Tensor.item() call with capture_scalar_outputs=False"
BRANCH = "Data-dependent branching"
DISABLED = "Skip calling `torch.compiler.disable()`d function"
SKIPPED = "Attempted to call function marked as skipped"
TORCH_WARNS_ABOUT_C_FUNCTIONS = pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
# ctypes.c_int(3): torch 2.13 traces the C type's __new__ as a method of its metatype and breaks on
# that call; older torch breaks on calling the builtin _SimpleCData.__new__, and warns about it.
if hasattr(torch._dynamo.variables, "BoundBuiltinMethodVariable"):
    CTYPES_GB_TYPE, CTYPES_NAMED = "Unsupported method call", "PyCSimpleType"
else:
    CTYPES_GB_TYPE, CTYPES_NAMED = SKIPPED, "_SimpleCData.__new__"
GB_SITE = "https://meta-pytorch.github.io/compile-graph-break-site/gb"
GRAPH_BREAK_LOGGERS = ("torch._dynamo", "torch._dynamo.symbolic_convert.__graph_breaks",
                       "torch._dynamo.convert_frame.__graph_breaks")


def where(brk):
    """(function, line) of each frame, outermost first; every frame must be in zoo.py."""
    assert all(Path(frame.filename).resolve() == zoo.SOURCE for frame in brk.frames), brk.frames
    return [(frame.function, frame.lineno) for frame in brk.frames]


@pytest.fixture
def x():
    return torch.randn(8)


@pytest.mark.parametrize(("fn", "gb_type", "marker", "named"), [
    (zoo.prints, BUILTIN, "print", "`print`"),
    (zoo.reads_item, ITEM, "item", "Tensor.item()"),
    (zoo.branches_on_data, BRANCH, "if", "data-dependent branching"),
    (zoo.calls_unsupported_builtin, BUILTIN, "builtin", "`dir`"),
    pytest.param(zoo.calls_c_function, SKIPPED, "c function", "zlib.crc32",
                 marks=TORCH_WARNS_ABOUT_C_FUNCTIONS),
    pytest.param(zoo.calls_ctypes, CTYPES_GB_TYPE, "ctypes", CTYPES_NAMED,
                 marks=TORCH_WARNS_ABOUT_C_FUNCTIONS),
    (zoo.breaks_first, BUILTIN, "first", "`print`"),
])
def test_each_known_break_is_found_with_its_type_and_line(fn, gb_type, marker, named, x):
    report = find_graph_breaks(fn, x)

    assert report.graph_break_count == 1 and report.error is None
    [brk] = report.breaks
    assert brk.gb_type == gb_type
    assert where(brk) == [(fn.__name__, zoo.line_of(marker))]
    assert brk.location.line.endswith(f"# break: {marker}")
    assert named in brk.explanation and brk.hints and not brk.disabled
    assert brk.gb_id.startswith("GB")
    assert brk.url == f"{GB_SITE}/gb{brk.gb_id[2:]}.html"
    torch.testing.assert_close(report.output, fn(x))


def test_a_break_in_a_nested_helper_has_every_frame_outermost_first_and_is_counted_once(x):
    report = find_graph_breaks(zoo.calls_helpers, x)

    [brk] = report.breaks
    assert brk.gb_type == BUILTIN
    assert where(brk) == [("calls_helpers", zoo.line_of("outer call")),
                          ("_scale_and_log", zoo.line_of("middle call")),
                          ("_log", zoo.line_of("helper"))]


def test_a_helper_called_from_two_lines_breaks_at_each_call(x):
    report = find_graph_breaks(zoo.calls_helper_twice, x)

    assert [where(brk) for brk in report.breaks] == [
        [("calls_helper_twice", zoo.line_of("first call")), ("_log", zoo.line_of("helper"))],
        [("calls_helper_twice", zoo.line_of("second call")), ("_log", zoo.line_of("helper"))],
    ]


def test_a_break_in_a_loop_names_its_cause(x):
    [brk] = find_graph_breaks(zoo.calls_helper_in_loop, x).breaks

    assert (brk.gb_type, brk.caused_by) == ("graph break in loop", BUILTIN)
    assert where(brk) == [("calls_helper_in_loop", zoo.line_of("loop call")),
                          ("_log", zoo.line_of("helper"))]


def test_several_breaks_are_reported_in_order(x):
    report = find_graph_breaks(zoo.breaks_three_times, x)

    assert [brk.gb_type for brk in report.breaks] == [BUILTIN, ITEM, BRANCH]
    assert [brk.location.lineno for brk in report.breaks] == [zoo.line_of(f"three {n}") for n in "123"]
    assert report.graph_break_count == 3


def test_a_break_inside_a_submodule_forward_is_found_through_the_module(x):
    x = torch.randn(2, 8)
    net = zoo.Net()
    report = find_graph_breaks(net, x)

    assert report.function == "Net.forward"
    [brk] = report.breaks
    assert brk.gb_type == BUILTIN
    assert where(brk) == [("forward", zoo.line_of("module call")), ("forward", zoo.line_of("module"))]
    torch.testing.assert_close(report.output, net(x))


def test_a_bound_method_is_checked_with_its_instance(x):
    report = find_graph_breaks(zoo.Scaler(3.0).scale, x)

    assert report.function == "Scaler.scale"
    assert [where(brk) for brk in report.breaks] == [[("scale", zoo.line_of("method"))]]
    torch.testing.assert_close(report.output, x * 3.0 + 1)


def test_a_disabled_call_is_listed_as_such_and_not_counted(x):
    report = assert_no_graph_breaks(zoo.calls_disabled, x)

    [brk] = report.breaks
    assert brk.disabled and brk.gb_type == DISABLED
    assert where(brk) == [("calls_disabled", zoo.line_of("disabled"))]
    assert (report.graph_break_count, report.disabled_count, report.graph_count) == (0, 1, 2)
    torch.testing.assert_close(report.output, (x * 2).sin() + 1)


def test_a_clean_function_passes_and_its_ops_are_counted(x):
    report = assert_no_graph_breaks(zoo.clean, x)

    assert report.breaks == () and report.graph_count == 1
    assert report.ops_per_graph == (3,)  # call_method sin, call_function relu and mul
    torch.testing.assert_close(report.output, zoo.clean(x))


def test_a_clean_module_passes(x):
    net = zoo.CleanNet()
    report = assert_no_graph_breaks(net, torch.randn(2, 8))

    assert (report.graph_count, report.graph_break_count, report.ops_per_graph) == (1, 0, (2,))


def test_ops_are_counted_per_graph_on_each_side_of_a_break(x):
    report = find_graph_breaks(zoo.prints, x)

    assert (report.graph_count, report.ops_per_graph) == (2, (1, 1))


def test_the_failure_message_lists_each_break_with_its_line_and_first_hint(x):
    with pytest.raises(GraphBreakError) as caught:
        assert_no_graph_breaks(zoo.breaks_three_times, x)

    error = caught.value
    assert isinstance(error, CheckFailure) and isinstance(error, AssertionError)
    assert isinstance(error.report, GraphBreakReport) and error.report.graph_break_count == 3
    lines = str(error).splitlines()
    path = display_path(zoo.__file__)
    assert lines[0] == "3 graph breaks in breaks_three_times (limit 0)"
    assert lines[1] == f"  1. {path}:{zoo.line_of('three 1')} in breaks_three_times: {BUILTIN}"
    assert lines[2] == '       print("one")  # break: three 1'
    assert lines[3].startswith("       Dynamo does not know how to trace builtin operator `print`")
    assert lines[4] == f"       Hint: {error.report.breaks[0].hints[0]}"
    assert lines[5] == f"  2. {path}:{zoo.line_of('three 2')} in breaks_three_times: {ITEM}"
    assert lines[9] == f"  3. {path}:{zoo.line_of('three 3')} in breaks_three_times: {BRANCH}"
    assert lines[10] == "       if y.sum() > 0:  # break: three 3"
    assert lines[-1].startswith("Hint: fix them in order")


def test_nested_frames_show_their_callers_in_the_message(x):
    with pytest.raises(GraphBreakError) as caught:
        assert_no_graph_breaks(zoo.calls_helpers, x)

    lines = str(caught.value).splitlines()
    path = display_path(zoo.__file__)
    assert lines[1] == f"  1. {path}:{zoo.line_of('helper')} in _log: {BUILTIN}"
    assert lines[3:5] == [f"       called from {path}:{zoo.line_of('middle call')} in _scale_and_log",
                          f"       called from {path}:{zoo.line_of('outer call')} in calls_helpers"]


def test_msg_leads_and_max_breaks_sets_the_limit(x):
    with pytest.raises(GraphBreakError, match=r"^while testing\n\n3 graph breaks in .* \(limit 2\)"):
        assert_no_graph_breaks(zoo.breaks_three_times, x, msg="while testing", max_breaks=2)
    assert assert_no_graph_breaks(zoo.breaks_three_times, x, max_breaks=3).graph_break_count == 3


def test_an_exception_from_fn_keeps_the_breaks_seen_before_it(x):
    report = find_graph_breaks(zoo.raises_after_break, x)

    assert isinstance(report.error, ValueError) and report.output is None
    [brk] = report.breaks
    assert where(brk) == [("raises_after_break", zoo.line_of("before raise"))]
    assert str(report).endswith("The call raised ValueError: boom")
    assert report.to_dict()["error"] == "ValueError: boom"


def test_assert_re_raises_the_exception_from_fn_with_the_breaks_as_a_note(x):
    with pytest.raises(ValueError, match="boom") as caught:
        assert_no_graph_breaks(zoo.raises_after_break, x)
    if hasattr(caught.value, "__notes__"):
        note = caught.value.__notes__[0]
        assert note.startswith("1 graph break in raises_after_break before it raised:")
        assert f":{zoo.line_of('before raise')} in raises_after_break: {BUILTIN}" in note


def test_the_report_round_trips_through_json_and_prints_a_summary(x):
    report = find_graph_breaks(zoo.calls_helpers, x)

    data = json.loads(json.dumps(report.to_dict()))
    assert (data["graph_break_count"], data["disabled_count"], data["error"]) == (1, 0, None)
    assert data["ops_per_graph"] == list(report.ops_per_graph)
    [brk] = data["breaks"]
    assert brk["gb_type"] == BUILTIN and brk["gb_id"] == report.breaks[0].gb_id
    assert [frame["lineno"] for frame in brk["frames"]] == [
        zoo.line_of("outer call"), zoo.line_of("middle call"), zoo.line_of("helper")]
    assert brk["frames"][-1]["line"] == 'print("log", x.shape)  # break: helper'
    summary = str(report)
    assert summary.startswith(f"calls_helpers (backend eager): {report.graph_count} graphs")
    assert "1 graph break, 0 disabled calls" in summary and report.breaks[0].url in summary


def test_finds_what_explain_and_fullgraph_miss(x):
    # explain() counts graphs minus one: a first-statement break leaves one graph and no reason,
    # a data-dependent `if` is only "generic_jump", and one break two helpers deep splits three
    # frames, so it counts three and lists the same break twice.
    first = torch._dynamo.explain(zoo.breaks_first)(x)
    assert (first.graph_break_count, first.break_reasons) == (0, [])
    branch = torch._dynamo.explain(zoo.branches_on_data)(x)
    assert [reason.reason for reason in branch.break_reasons] == ["generic_jump TensorVariable()"]
    nested = torch._dynamo.explain(zoo.calls_helpers)(x)
    assert (nested.graph_break_count, len(nested.break_reasons)) == (3, 2)
    # fullgraph=True turns on scalar capture, so .item() compiles there.
    torch.compile(zoo.reads_item, fullgraph=True, backend="eager")(x)

    assert [[brk.gb_type for brk in find_graph_breaks(fn, x).breaks]
            for fn in (zoo.breaks_first, zoo.branches_on_data, zoo.calls_helpers, zoo.reads_item)
            ] == [[BUILTIN], [BRANCH], [BUILTIN], [ITEM]]


def test_aot_eager_backend_finds_the_same_break(x):
    report = find_graph_breaks(zoo.breaks_three_times, x, backend="aot_eager")

    assert report.backend == "aot_eager"
    assert [brk.gb_type for brk in report.breaks] == [BUILTIN, ITEM, BRANCH]


def test_a_custom_backend_callable_is_wrapped_too(x):
    compiled = []

    def counting_backend(gm, example_inputs):
        compiled.append(gm)
        return gm.forward

    report = find_graph_breaks(zoo.prints, x, backend=counting_backend)
    assert report.backend == "counting_backend" and len(compiled) == report.graph_count == 2


def test_inductor_backend_reports_the_break_and_the_output(x):
    report = find_graph_breaks(zoo.calls_disabled, x, backend="inductor")

    assert (report.graph_break_count, report.disabled_count, report.graph_count) == (0, 1, 2)
    torch.testing.assert_close(report.output, (x * 2).sin() + 1)


# -- misuse --

def test_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        find_graph_breaks(3)


def test_an_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of .*, got 'nope'"):
        find_graph_breaks(zoo.clean, torch.randn(2), backend="nope")
    with pytest.raises(TypeError, match="backend must be a backend name or a callable, got int"):
        find_graph_breaks(zoo.clean, torch.randn(2), backend=3)


@pytest.mark.parametrize(("max_breaks", "error"),
                         [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_max_breaks_must_be_a_non_negative_int(max_breaks, error):
    with pytest.raises(error, match="max_breaks must be"):
        assert_no_graph_breaks(zoo.clean, torch.randn(2), max_breaks=max_breaks)


def test_msg_must_be_a_string():
    with pytest.raises(TypeError, match="msg must be a str or None, got int"):
        assert_no_graph_breaks(zoo.clean, torch.randn(2), msg=3)


# -- torch's global state --

def _torch_state():
    loggers = [logging.getLogger(name) for name in GRAPH_BREAK_LOGGERS]
    log_state = torch_hooks.get_log_state()
    return {
        "config": torch._dynamo.config.get_config_copy(),
        "stance": torch_dynamo.get_stance(),
        "loggers": [(lg.level, lg.propagate, lg.disabled, list(lg.handlers)) for lg in loggers],
        "log_state": (dict(log_state.log_qname_to_level), set(log_state.artifact_names)),
        "hook": torch._dynamo.symbolic_convert.InstructionTranslatorBase.log_graph_break,
    }


@pytest.fixture(params=["default", "customised"])
def torch_state(request):
    """torch as a fresh process has it, or with logging, config and stance a user might set."""
    if request.param == "default":
        yield
        return
    handler = logging.NullHandler()
    dynamo_log = logging.getLogger("torch._dynamo")
    torch._logging.set_logs(graph_breaks=True)
    dynamo_log.addHandler(handler)
    try:
        with torch._dynamo.config.patch(recompile_limit=3), \
                torch.compiler.set_stance("eager_on_recompile"):
            yield
    finally:
        dynamo_log.removeHandler(handler)
        torch._logging.set_logs()


@pytest.mark.parametrize("fn", [zoo.clean, zoo.prints, zoo.raises_after_break],
                         ids=["passes", "breaks", "raises"])
def test_torch_state_is_left_exactly_as_found(torch_state, fn, x):
    before = _torch_state()

    find_graph_breaks(fn, x)
    assert _torch_state() == before
    with contextlib.suppress(GraphBreakError, ValueError):
        assert_no_graph_breaks(fn, x)
    assert _torch_state() == before


def test_a_force_eager_stance_does_not_hide_breaks(x):
    with torch.compiler.set_stance("force_eager"):
        report = find_graph_breaks(zoo.prints, x)
        assert torch_dynamo.get_stance().stance == "force_eager"
    assert report.graph_break_count == 1


def test_a_hook_on_one_thread_does_not_hold_up_a_check_on_another(x):
    translator = torch._dynamo.symbolic_convert.InstructionTranslatorBase
    unpatched = translator.log_graph_break
    seen_by_outer: list[str] = []
    reports: list[GraphBreakReport] = []
    with torch_hooks.graph_break_hook(lambda exc, code, lineno: seen_by_outer.append(code.co_name)):
        worker = threading.Thread(target=lambda: reports.append(find_graph_breaks(zoo.prints, x)))
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "find_graph_breaks waited for the other thread's hook"
    assert [report.graph_break_count for report in reports] == [1]
    # Hooks see breaks on every thread, and the last one out puts dynamo's method back.
    assert seen_by_outer == ["prints"]
    assert translator.log_graph_break is unpatched


# -- the reference model --

@pytest.fixture
def tokens(tiny_cfg):
    return torch.randint(0, tiny_cfg.vocab_size, (2, 16))


def test_prefill_with_a_cache_has_no_graph_breaks(tiny_cfg, tiny_params, tokens):
    cache = new_cache(tiny_cfg, batch_size=2)
    report = assert_no_graph_breaks(forward, tiny_params, tokens, cfg=tiny_cfg, cache=cache,
                                    input_pos=torch.arange(tokens.shape[1]))

    assert report.graph_count == 1 and report.breaks == ()
    assert report.output.shape == (2, 16, tiny_cfg.vocab_size)


def test_decode_at_a_device_tensor_position_has_no_graph_breaks(tiny_cfg, tiny_params):
    cache = new_cache(tiny_cfg, batch_size=2)
    report = assert_no_graph_breaks(forward, tiny_params, torch.tensor([[3], [4]]), cfg=tiny_cfg,
                                    cache=cache, input_pos=torch.tensor([5]))

    assert report.graph_count == 1 and report.breaks == ()
    assert report.output.shape == (2, 1, tiny_cfg.vocab_size)


def _loss(params, tokens, cfg):
    # .backward() inside the region would itself break the graph; it runs on the output instead.
    logits = forward(params, tokens, cfg=cfg)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def test_a_training_step_has_no_graph_breaks(tiny_cfg, tiny_params, tokens):
    params = {name: value.clone().requires_grad_() for name, value in tiny_params.items()}
    report = assert_no_graph_breaks(_loss, params, tokens, tiny_cfg)

    assert report.graph_count == 1 and report.breaks == ()
    report.output.backward()
    assert all(param.grad is not None for param in params.values())
