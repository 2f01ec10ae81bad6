import logging
import re

import pytest
import torch

import recompile_zoo as zoo
from fullgraph.checks import _state
from fullgraph.checks._compat import dynamo as torch_dynamo
from fullgraph.checks._compat import hooks as torch_hooks
from fullgraph.checks.recompiles import (
    GuardFailure,
    RecompileBudgetError,
    assert_recompiles_at_most,
    failure_lines,
    failures_from_log,
    parse_guard_failure,
    recompile_budget,
    track_compiles,
)

ZOO = zoo.SOURCE.name


def at(marker):
    return f"{ZOO}:{zoo.line_of(marker)}"


def where(event):
    return f"{event.function.filename.rsplit('/', 1)[-1]}:{event.function.lineno}"


def only_recompile(report):
    assert len(report.recompiles) == 1, str(report)
    return report.recompiles[0]


# -- known-bad snippets: count, guard kind, file:line ---------------------------------------------

def test_a_module_attribute_changed_each_call_recompiles_each_call():
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.StepCounter(), [torch.ones(3)] * 3, 0)
    report = failure.value.report
    assert [event.kind for event in report.events] == ["compile", "recompile", "recompile"]
    guard = report.recompiles[-1].failures[0]
    assert (guard.kind, guard.source, guard.origin) == ("value", "self.steps", "module attribute")
    assert guard.expected == "1"  # the value the newest graph baked in
    assert f"{guard.where.filename.rsplit('/', 1)[-1]}:{guard.where.lineno}" == at("counter-guard")
    assert "integer attributes of the nn.Module" in guard.note
    assert where(report.recompiles[0]) == at("counter-forward")
    message = str(failure.value)
    assert message.startswith("forward recompiled 2 times, more than the limit of 0 per function")
    assert f"{at('counter-forward')} in forward: recompile #1 (compile 0/1)" in message
    assert f"{at('counter-guard')} in forward: self.steps += 1  # at: counter-guard" in message


def test_a_python_int_loop_bound_changed_each_call_recompiles_each_call():
    calls = [(torch.ones(3), times) for times in (1, 2, 3, 4)]
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.repeat_add, calls, 1)
    report = failure.value.report
    assert len(report.recompiles) == 3
    guard = report.recompiles[-1].failures[0]
    assert (guard.kind, guard.source, guard.expected, guard.origin) == ("value", "times", "3",
                                                                        "argument")
    assert guard.where.lineno == zoo.line_of("repeat-add-guard")
    assert all(where(event) == at("repeat-add") for event in report.events)


def test_a_python_int_in_arithmetic_costs_one_recompile_then_goes_dynamic():
    calls = [(torch.ones(3), offset) for offset in range(1, 6)]
    report = assert_recompiles_at_most(zoo.shift, calls, 1)
    guard = only_recompile(report).failures[0]
    assert (guard.kind, guard.source, guard.expected) == ("value", "offset", "1")


def test_a_dtype_change_recompiles_once():
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.scale, [torch.ones(3), torch.ones(3, dtype=torch.float64)], 0)
    event = only_recompile(failure.value.report)
    guard = event.failures[0]
    assert (guard.kind, guard.source, guard.expected, guard.actual) == ("dtype", "x.dtype",
                                                                       "Float", "Double")
    assert where(event) == at("scale")
    assert "dtype guard on x.dtype: expected Float, actual Double (entry 0/0)" in str(failure.value)


def test_a_requires_grad_change_recompiles_once():
    calls = [torch.ones(3), torch.ones(3, requires_grad=True)]
    report = assert_recompiles_at_most(zoo.scale, calls, 1)
    guard = only_recompile(report).failures[0]
    assert (guard.kind, guard.source, guard.expected, guard.actual) == (
        "requires_grad", "x.requires_grad", "False", "True")


def test_no_grad_after_grad_recompiles_on_grad_mode():
    compiled = torch.compile(zoo.scale, backend="eager")
    with pytest.raises(RecompileBudgetError) as failure:
        with recompile_budget(0):
            compiled(torch.ones(3))
            with torch.no_grad():
                compiled(torch.ones(3))
    event = only_recompile(failure.value.report)
    assert [(f.kind, f.source) for f in event.failures] == [("grad_mode", "grad_mode")]
    assert where(event) == at("scale")
    assert "Grad mode is part of the guard" in str(failure.value)


def test_a_shape_change_with_dynamic_false_recompiles_for_every_size():
    calls = [torch.ones(size) for size in (2, 3, 4)]
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.scale, calls, 1, dynamic=False)
    report = failure.value.report
    assert len(report.recompiles) == 2
    guard = report.recompiles[0].failures[0]
    assert (guard.kind, guard.source, guard.expected, guard.actual) == ("size", "x.size()[0]",
                                                                       "2", "3")
    assert re.search(rf"1\. .*{at('scale')} in scale: recompile #2 \(compile 0/2\)",
                     str(failure.value))


def test_a_size_outside_both_bounds_is_reported_with_the_bounds_and_the_size_it_had():
    first = torch.ones(3, 4)
    torch._dynamo.mark_dynamic(first, 0, min=2, max=11)
    compiled = torch.compile(zoo.rows_sum, backend="eager")
    with track_compiles() as report:
        compiled(first)
        compiled(torch.ones(12, 4))
    guard = only_recompile(report).failures[0]
    assert guard.describe() == "size guard on x.size()[0]: expected >= 2 and <= 11, actual 12"
    assert guard.where.lineno == zoo.line_of("rows-sum") + 1


def test_a_size_below_a_dynamic_dimension_s_bound_is_reported_with_the_size_it_had():
    report = assert_recompiles_at_most(zoo.rows_sum, [torch.ones(n, 4) for n in (2, 3, 1)], 2)
    guard = report.recompiles[-1].failures[0]
    assert guard.describe() == "size guard on x.size()[0]: expected >= 2, actual 1"
    assert guard.note.startswith("sizes 0 and 1 are always specialised")


def test_one_guard_failing_under_per_compile_global_names_is_one_line():
    failures = [parse_guard_failure(f"0/{entry}: ___check_obj_id(G['__builtins_dict___{name}']"
                                    f"['len'], 9001)") for entry, name in ((1, 2), (0, 0))]
    assert failures[0].source == failures[1].source == "G['__builtins_dict__']['len']"
    assert failure_lines(failures) == [
        "id guard on G['__builtins_dict__']['len']: expected 9001 (entry 0/1, 0/0)"]


def test_the_recompile_limit_fallback_fails_any_budget():
    calls = [torch.ones(size) for size in range(2, 8)]
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(RecompileBudgetError) as failure:
            assert_recompiles_at_most(zoo.scale, calls, 100, dynamic=False)
    report = failure.value.report
    # Two graphs, then one refused attempt; the calls after it run eagerly without a word.
    assert [event.kind for event in report.events] == ["compile", "recompile", "recompile_limit"]
    hit = report.limit_hits[0]
    assert where(hit) == at("scale")
    assert hit.error == "hit torch._dynamo.config.recompile_limit (2): runs eagerly from now on"
    assert hit.failures[0].kind == "size"
    message = str(failure.value)
    assert message.startswith("1 hit torch._dynamo.config.recompile_limit and fell back to eager")
    assert "recompile #2 refused: recompile limit hit" in message


def test_functions_through_one_wrapper_share_its_code_and_its_recompile_limit():
    # Three functions, one decorator: the third is one recompile past a limit of 2, and runs
    # eagerly. The guard is on which function the wrapper's closure holds.
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(RecompileBudgetError) as failure, recompile_budget(100):
            for function in (zoo.add_one, zoo.double, zoo.negate):
                torch.compile(function, backend="eager")(torch.ones(2))
    report = failure.value.report
    assert [event.kind for event in report.events] == ["compile", "recompile", "recompile_limit"]
    assert all(where(event) == at("wrapper") for event in report.events)
    guard = report.limit_hits[0].failures[0]
    assert (guard.kind, guard.source) == ("id", "fn.__code__")
    assert f"{guard.where.filename.rsplit('/', 1)[-1]}:{guard.where.lineno}" == at("wrapper-guard")
    hint = str(failure.value).split("\nHint: ")[1]
    assert hint.startswith("One code object runs several functions: a wrapper (a decorator's)")
    assert "keep it the same object" not in hint and "rather than raising the limit" not in hint


def test_the_recompile_limit_under_fullgraph_is_recorded_too():
    compiled = torch.compile(zoo.scale, backend="eager", dynamic=False, fullgraph=True)
    with torch._dynamo.config.patch(recompile_limit=1), track_compiles() as report:
        compiled(torch.ones(2))
        with pytest.raises(Exception, match="fullgraph"):
            compiled(torch.ones(3))
    assert [event.kind for event in report.events] == ["compile", "recompile_limit"]
    assert where(report.events[1]) == at("scale")


# -- known good ----------------------------------------------------------------------------------

def test_known_good_code_passes_and_returns_the_report():
    model = zoo.MLP()
    calls = [torch.ones(batch, 8) for batch in (2, 3, 4, 5, 3)]
    report = assert_recompiles_at_most(model, calls, 1)
    assert [event.kind for event in report.events] == ["compile", "recompile"]
    assert report.recompiles[0].failures[0].source == "x.size()[0]"


@pytest.mark.parametrize("backend", ["eager", "aot_eager",
                                     "inductor"])
def test_every_backend_is_tracked(backend):
    calls = [torch.ones(3), torch.ones(3, dtype=torch.float64), torch.ones(3)]
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.scale, calls, 0, backend=backend)
    assert only_recompile(failure.value.report).failures[0].kind == "dtype"


def test_a_bound_method_is_tracked():
    calls = [torch.ones(3), torch.ones(3, dtype=torch.float64)]
    with pytest.raises(RecompileBudgetError) as failure:
        assert_recompiles_at_most(zoo.Scaler(2.0).apply, calls, 0)
    assert where(only_recompile(failure.value.report)) == at("scaler-apply")


def test_an_already_compiled_function_is_compiled_again_with_the_options_given():
    compiled = torch.compile(zoo.scale, backend="eager", dynamic=True)
    with pytest.raises(RecompileBudgetError):
        assert_recompiles_at_most(compiled, [torch.ones(2), torch.ones(3)], 0, dynamic=False)


# -- the tracker ---------------------------------------------------------------------------------

def test_track_compiles_watches_functions_compiled_before_it_and_does_not_reset():
    compiled = torch.compile(zoo.scale, backend="eager")
    compiled(torch.ones(3))
    with track_compiles() as report:
        compiled(torch.ones(3))  # cached: no event
        compiled(torch.ones(3, dtype=torch.float64))
    assert [(event.compile_id, event.kind) for event in report.events] == [("0/1", "recompile")]


def test_the_report_is_live_inside_the_block_and_frozen_after():
    compiled = torch.compile(zoo.scale, backend="eager")
    with track_compiles() as report:
        compiled(torch.ones(3))
        assert len(report.events) == 1
        compiled(torch.ones(3, dtype=torch.float64))
        assert len(report.recompiles) == 1
    compiled(torch.ones(3, dtype=torch.int64))
    assert len(report.events) == 2
    assert report.to_dict()["events"][1]["failures"][0]["kind"] == "dtype"
    assert "2 compiles, 1 recompile, 0 recompile-limit hits" in str(report)


def test_a_budget_per_function_or_in_all():
    other = torch.compile(zoo.rows_sum, backend="eager", dynamic=False)
    compiled = torch.compile(zoo.scale, backend="eager")

    def recompile_both():
        compiled(torch.ones(3))
        compiled(torch.ones(3, dtype=torch.float64))
        other(torch.ones(2, 2))
        other(torch.ones(2, 3))

    with recompile_budget(1):
        recompile_both()
    torch.compiler.reset()
    with pytest.raises(RecompileBudgetError, match=r"^2 recompiles, more than the limit of 1\n"):
        with recompile_budget(1, per_function=False):
            recompile_both()


def test_the_user_message_comes_first():
    with pytest.raises(RecompileBudgetError, match=r"^decode step\n\nforward recompiled"):
        assert_recompiles_at_most(zoo.StepCounter(), [torch.ones(1)] * 2, 0, msg="decode step")


# -- torch's global state --------------------------------------------------------------------

def _torch_state():
    log_state = torch_hooks.get_log_state()
    return {
        "config": torch_dynamo.dynamo_config().get_config_copy(),
        "stance": torch_dynamo.get_stance(),
        "log levels": dict(log_state.log_qname_to_level),
        "artifacts": set(log_state.artifact_names),
        "loggers": {logger.name: (logger.level, logger.propagate, tuple(logger.handlers))
                    for logger in torch_hooks.torch_loggers()},
        "metrics kept": torch_dynamo.compilation_metrics_capacity(),
    }


@pytest.mark.parametrize("fails", [False, True], ids=["pass", "fail"])
def test_torch_state_is_restored(fails):
    torch_dynamo.compilation_metrics()  # import the loggers before the snapshot
    before = _torch_state()
    # Failing with the most to undo: a recompile-limit hit, torch's warning logged meanwhile.
    limit = 3 if fails else 8
    try:
        with torch._dynamo.config.patch(recompile_limit=limit):
            assert_recompiles_at_most(zoo.scale, [torch.ones(n) for n in (2, 3, 4, 5)], 5,
                                      dynamic=False)
    except RecompileBudgetError:
        assert fails
    else:
        assert not fails
    after = _torch_state()
    # A first compile imports modules that make loggers of their own; none may hold our handler.
    new = [after["loggers"].pop(name) for name in set(after["loggers"]) - set(before["loggers"])]
    assert after == before
    assert not [handler for _, _, handlers in new for handler in handlers
                if getattr(handler, "_fullgraph", False)]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_recompile_logs_stay_quiet_unless_the_user_asked_for_them():
    # torch prints through its handlers on "torch._dynamo": nothing of ours may reach them.
    records = _Records()
    with _state.preserved_torch_state():
        logging.getLogger("torch._dynamo").addHandler(records)
        report = assert_recompiles_at_most(zoo.scale, [torch.ones(2), torch.ones(3)], 1)
    assert only_recompile(report).failures[0].kind == "size"
    assert not [message for message in records.messages if "Recompiling function" in message]


def test_recompiles_verbose_logging_set_by_the_user_is_kept_and_read():
    records = _Records()
    with _state.preserved_torch_state():
        torch._logging.set_logs(recompiles_verbose=True)
        logging.getLogger("torch._dynamo").addHandler(records)
        report = assert_recompiles_at_most(zoo.scale, [torch.ones(2), torch.ones(3, 2)], 1)
        assert torch_hooks.log_artifact_enabled("recompiles_verbose")
    assert only_recompile(report).failures[0].kind == "ndim"
    assert [message for message in records.messages if "Recompiling function" in message]


# -- misuse ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"inputs": torch.ones(3)}, TypeError, "inputs must be an iterable of calls"),
    ({"inputs": []}, ValueError, "inputs is empty"),
    ({"max_recompiles": -1}, ValueError, "max_recompiles must be >= 0"),
    ({"max_recompiles": True}, TypeError, "max_recompiles must be an int"),
    ({"dynamic": "yes"}, TypeError, "dynamic must be None, True or False"),
    ({"backend": 3}, TypeError, "backend must be a backend name or a callable"),
    ({"fn": 3}, TypeError, "fn must be callable"),
])
def test_misuse_names_the_argument(kwargs, error, match):
    arguments = {"fn": zoo.scale, "inputs": [torch.ones(3)], "max_recompiles": 0, **kwargs}
    with pytest.raises(error, match=match):
        assert_recompiles_at_most(arguments.pop("fn"), arguments.pop("inputs"),
                                  arguments.pop("max_recompiles"), **arguments)


# -- torch's guard-failure texts (torch 2.13), parsed --------------------------------------------

@pytest.mark.parametrize("reason, expected", [
    ("0/0: tensor 'x' size mismatch at index 1. expected 3, actual 4",
     ("size", "x.size()[1]", "3", "4")),
    ("0/2: tensor 'x' stride mismatch at index 0. expected 3, actual 1",
     ("stride", "x.stride()[0]", "3", "1")),
    ("0/1: tensor 'cache.k' dtype mismatch. expected Float, actual Double",
     ("dtype", "cache.k.dtype", "Float", "Double")),
    ("0/0: tensor 'x' requires_grad mismatch. expected requires_grad=0",
     ("requires_grad", "x.requires_grad", "False", "True")),
    ("0/2: tensor 'x' rank mismatch. expected 1, actual 2", ("ndim", "x.dim()", "1", "2")),
    ("0/0: tensor 'x' dispatch key set mismatch. expected DispatchKeySet(CPU, BackendSelect, "
     "ADInplaceOrView, AutogradCPU), actual DispatchKeySet(Meta, BackendSelect, ADInplaceOrView, "
     "AutogradMeta)", ("device", "x.device", "CPU", "Meta")),
    ("0/4: GLOBAL_STATE changed: grad_mode ", ("grad_mode", "grad_mode", None, None)),
    ("0/3: GLOBAL_STATE changed: autocast(cpu)_enabled ",
     ("global_state", "autocast(cpu)_enabled", None, None)),
    ("1/0: G['COUNT'] == 0                                               # return x + COUNT  "
     "# mp/exp/e2.py:27 in g", ("value", "G['COUNT']", "0", None)),
    ("6/0: len(t) == 2                                  # return x + len(t)  # e.py:49 in s",
     ("length", "t", "2", None)),
    ("8/0: ___check_obj_id(act, 140438233834624), type=<class 'builtin_function_or_method'>  "
     "# return act(x)  # e.py:55 in fn_arg", ("id", "act", "140438233834624", None)),
    ("2/1: 2 <= x.size()[0]  # return x.sum(1)  # e.py:33 in h (user code shown is first use of "
     "this value--the guard itself is not due user code but due to 0/1 specialization in the "
     "framework; to avoid specialization try torch._dynamo.decorators.mark_unbacked(tensor, dim))",
     ("size", "x.size()[0]", ">= 2", None)),
    ("0/0: cache.k.size()[0] == tokens.size()[0]  # duck sizing",
     ("size", "cache.k.size()[0]", "tokens.size()[0]", None)),
])
def test_torch_guard_failure_texts_are_parsed(reason, expected):
    failure = parse_guard_failure(reason)
    assert (failure.kind, failure.source, failure.expected, failure.actual) == expected
    assert failure.text == reason
    assert failure.entry == reason.split(":")[0]


def test_a_failure_keeps_torch_hint_and_the_user_frame():
    failure = parse_guard_failure(
        f"0/0: self.steps == 0   # self.steps += 1  # e.py:17 in forward (HINT: make it a tensor.)"
        f"\nUser stack trace:\n  File \"{zoo.SOURCE}\", line {zoo.line_of('counter-guard')}, "
        f"in forward\n    self.steps += 1")
    assert failure.note == "make it a tensor."
    assert failure.where.line == "self.steps += 1  # at: counter-guard"
    assert isinstance(failure, GuardFailure) and failure.to_dict()["where"]["function"] == "forward"


def test_a_guard_comment_naming_a_file_that_shares_only_the_root_with_torch_is_found():
    # torch writes such a path one character short: /work/m.py as "ork/m.py".
    line = zoo.line_of("repeat-add-guard")
    failure = parse_guard_failure(f"0/1: times == 2  # for _ in range(times):  "
                                  f"# {str(zoo.SOURCE)[2:]}:{line} in repeat_add")
    assert (failure.where.filename, failure.where.lineno) == (str(zoo.SOURCE), line)
    assert failure.where.line.endswith("# at: repeat-add-guard")


def test_both_log_layouts_are_parsed():
    plain = ("Recompiling function f in /x.py:3\n    triggered by the following guard failure(s):\n"
             "    - 0/1: n == 1       # return x * n  # x.py:4 in f\n    - User stack trace:\n"
             "    -   File \"/x.py\", line 4, in f\n    -     return x * n\n"
             "    - 0/0: tensor 'x' size mismatch at index 1. expected 3, actual 4")
    verbose = ("Recompiling function f in /x.py:3\n"
               "    triggered by the following guard failure(s):\n"
               "    guard 0 failures:\n    - 0/1: n == 1\n\n    guard 1 failures:\n"
               "    - 0/0: tensor 'x' size mismatch at index 1. expected 3, actual 4")
    for message in (plain, verbose):
        assert [(f.entry, f.kind) for f in failures_from_log(message)] == [("0/1", "value"),
                                                                           ("0/0", "size")]
    assert failures_from_log(plain)[0].where.lineno == 4
