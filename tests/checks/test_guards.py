import pytest
import torch

import recompile_zoo as zoo
from fullgraph.checks.guards import (
    GuardSet,
    UnstableGuardError,
    assert_no_unstable_guards,
    diff_guards,
    find_unstable_guards,
    guards_of,
)
from fullgraph.model import forward, new_cache

ZOO = zoo.SOURCE.name


# -- guards_of -----------------------------------------------------------------------------------

def test_guards_of_lists_each_graph_in_compile_order():
    compiled = torch.compile(zoo.scale, backend="eager", dynamic=False)
    for size in (2, 3, 4):
        compiled(torch.ones(size))
    sets = guards_of(compiled)
    assert [guard_set.compile_id for guard_set in sets] == ["0/0", "0/1", "0/2"]
    assert any(guard.startswith("check_tensor(L['x'], Tensor") and "size=[3]" in guard
               for guard in sets[1].guards)
    assert guards_of(zoo.scale) == sets  # the cache lives on the code object
    assert "cache entry 0/0" in str(sets[0]) and sets[0].to_dict()["compile_id"] == "0/0"


def test_guards_of_takes_modules_bound_methods_and_their_compiled_forms():
    model = zoo.MLP()
    compiled = torch.compile(model, backend="eager")
    compiled(torch.ones(2, 8))
    assert len(guards_of(model)) == len(guards_of(compiled)) == 1
    scaler = zoo.Scaler(2.0)
    torch.compile(scaler.apply, backend="eager")(torch.ones(2))
    assert [guard_set.compile_id for guard_set in guards_of(scaler.apply)] == ["1/0"]


def test_guards_of_a_function_never_compiled_is_empty():
    assert guards_of(zoo.rows_sum) == []


def test_guards_of_names_what_it_cannot_read():
    with pytest.raises(TypeError, match="obj must be a function, a method or an nn.Module"):
        guards_of(3)


def test_shape_guards_of_a_dynamic_graph_are_listed():
    compiled = torch.compile(zoo.rows_sum, backend="eager")
    compiled(torch.ones(2, 4))
    compiled(torch.ones(3, 4))
    assert "2 <= L['x'].size()[0]" in guards_of(compiled)[1].guards


# -- diff_guards ---------------------------------------------------------------------------------

def _compile_twice(first, second, fn=zoo.scale, **options):
    compiled = torch.compile(fn, backend="eager", **options)
    compiled(first)
    compiled(second)
    return compiled


def test_diff_guards_answers_why_a_shape_change_compiled_twice():
    compiled = _compile_twice(torch.ones(2), torch.ones(3), dynamic=False)
    assert diff_guards(0, 1, of=compiled).summary() == ("x.size()[0]: 2 -> 3  "
                                                        "(the guard that failed)")


def test_diff_guards_answers_why_a_dtype_change_compiled_twice():
    _compile_twice(torch.ones(2), torch.ones(2, dtype=torch.float64))
    diff = diff_guards(*guards_of(zoo.scale))
    assert diff.summary().startswith("x.dtype: torch.float32 -> torch.float64")
    assert diff.to_dict()["a"] == "0/0" and diff.to_dict()["b"] == "0/1"


def test_diff_guards_answers_why_no_grad_compiled_again():
    compiled = torch.compile(zoo.scale, backend="eager")
    compiled(torch.ones(2))
    with torch.no_grad():
        compiled(torch.ones(2))
    assert diff_guards(0, -1, of=zoo.scale).summary() == ("global grad_mode: true -> false  "
                                                          "(the guard that failed)")


def test_diff_guards_of_an_int_argument_and_of_a_dynamic_dimension():
    compiled = torch.compile(zoo.repeat_add, backend="eager")
    compiled(torch.ones(2), 1)
    compiled(torch.ones(2), 2)
    assert diff_guards(0, 1, of=compiled).summary().startswith("times: 1 -> 2")
    torch.compiler.reset()
    _compile_twice(torch.ones(2, 4), torch.ones(3, 4), fn=zoo.rows_sum)
    diff = diff_guards(0, 1, of=zoo.rows_sum)
    assert "x.size()[0]: 2 -> dynamic" in str(diff)
    assert "2 <= x.size()[0]: (no guard) -> guarded" in str(diff)


def test_a_guard_that_only_moved_to_another_global_name_is_no_difference():
    # The forms torch writes: the builtins dict under a per-compile counter, a global installed by
    # id with the compiling frame's number, an OrderedDict lookup as older torch wrote it.
    a = GuardSet("0/0", ("___check_obj_id(G['__builtins_dict___0']['len'], 9001)",
                         "___check_obj_id(G['___stream_cpu_140001_c0'], 140001)",
                         "___check_type_id(___odict_getitem(L['self']._modules, 'proj'), 77)",
                         "L['n'] == 1"))
    b = GuardSet("0/1", ("___check_obj_id(G['__builtins_dict___2']['len'], 9001)",
                         "___check_obj_id(G['___stream_cpu_140001_c1'], 140001)",
                         "___check_type_id(L['self']._modules['proj'], 77)",
                         "L['n'] == 2"))
    diff = diff_guards(a, b)
    assert [str(change) for change in diff.changes] == ["n: 1 -> 2"]
    assert diff.shared == 3
    assert str(diff) == "guards of 0/0 -> 0/1: 1 difference, 3 guards the same\n  n: 1 -> 2"


def test_differences_come_in_order_of_likely_cause():
    a = GuardSet("0/0", ("not hasattr(L['cfg'], 'extra')", "L['cfg'].depth == 2",
                         "check_tensor(L['x'], Tensor, DispatchKeySet(CPU), torch.float32, "
                         "device=None, requires_grad=False, size=[2], stride=[1])",
                         "L['mode'] == 'fast'"))
    b = GuardSet("0/1", ("L['cfg'].depth == 3",
                         "check_tensor(L['x'], Tensor, DispatchKeySet(CPU), torch.float32, "
                         "device=None, requires_grad=False, size=[4], stride=[1])",
                         "L['mode'] == 'slow'",
                         "___check_type_id(L['mode'], 5), type=<class 'str'>"),
                 reason="0/0: mode == 'fast'  # if mode == 'fast':  # m.py:3 in f")
    changes = diff_guards(a, b).changes
    assert [change.source for change in changes] == [
        "mode",  # the guard torch says failed
        "x.size()[0]",  # tensor guards
        "cfg.depth", "type(mode)",  # values and types, a changed value before a new guard
        "not hasattr(cfg, 'extra')"]  # the rest
    assert [change.failed for change in changes] == [True, False, False, False, False]


def test_a_device_change_marks_the_dispatch_keys_dynamo_guards_it_by():
    _compile_twice(torch.ones(2), torch.ones(2, device="meta"))
    (change,) = diff_guards(0, 1, of=zoo.scale).changes
    assert (change.source, change.failed) == ("x.dispatch_keys", True)
    assert change.after.startswith("DispatchKeySet(Meta")


def test_a_real_recompile_lists_the_failed_tensor_guard_before_the_changed_value():
    compiled = torch.compile(zoo.repeat_add, backend="eager")
    compiled(torch.ones(2), 1)
    compiled(torch.ones(2, dtype=torch.float64), 2)
    diff = diff_guards(*guards_of(compiled))
    # A value that changed comes before a guard only the second graph has.
    assert [(change.source, change.failed) for change in diff.changes] == [
        ("x.dtype", True), ("times", False), ("type(times)", False)]
    assert diff.to_dict()["changes"][0]["failed"] is True
    assert guards_of(compiled)[1].reason.startswith("0/0: tensor 'x' dtype mismatch")


def test_diff_of_identical_guards_says_so():
    torch.compile(zoo.scale, backend="eager")(torch.ones(2))
    (only,) = guards_of(zoo.scale)
    assert diff_guards(only, only).summary() == "0/0 and 0/0 have the same guards"


@pytest.mark.parametrize("a, b, of, error, match", [
    (0, 5, "compiled", ValueError, r"b=5, but there are 1 cache entries"),
    ("0", 0, "compiled", TypeError, "a must be an int index when of= is given"),
    (0, 1, None, TypeError, "a must be a GuardSet, or an int index with of="),
])
def test_diff_guards_misuse_names_the_argument(a, b, of, error, match):
    compiled = torch.compile(zoo.scale, backend="eager")
    compiled(torch.ones(2))
    with pytest.raises(error, match=match):
        diff_guards(a, b, of=compiled if of else None)


# -- unstable guards -----------------------------------------------------------------------------

def test_a_module_attribute_that_changes_each_call_is_unstable():
    (guard,) = find_unstable_guards(zoo.StepCounter(), [torch.ones(2)] * 4)
    assert (guard.kind, guard.source, guard.origin) == ("value", "self.steps", "module attribute")
    assert (guard.values, guard.recompiles, guard.calls) == (("0", "1", "2"), 3, 4)
    assert guard.where.lineno == zoo.line_of("counter-guard")
    assert guard.function.lineno == zoo.line_of("counter-forward")
    assert guard.to_dict()["where"]["lineno"] == zoo.line_of("counter-guard")


def test_a_python_int_that_changes_each_call_is_unstable():
    (guard,) = find_unstable_guards(zoo.repeat_add, [(torch.ones(2), n) for n in (1, 2, 3)])
    assert (guard.source, guard.origin, guard.values) == ("times", "argument", ("1", "2"))
    assert guard.where.lineno == zoo.line_of("repeat-add-guard")


def test_an_int_that_goes_dynamic_after_one_change_is_stable():
    assert find_unstable_guards(zoo.shift, [(torch.ones(2), n) for n in (1, 2, 3, 4)]) == []


def test_assert_no_unstable_guards_names_the_guard_and_its_line():
    with pytest.raises(UnstableGuardError) as failure:
        assert_no_unstable_guards(zoo.StepCounter(), [torch.ones(2)] * 3, msg="step counter")
    message = str(failure.value)
    line = zoo.line_of("counter-guard")
    assert message.startswith("step counter\n\n1 guard failed call after call "
                              "(2 recompiles in 3 calls), more than the limit of 0")
    assert f"{ZOO}:{line} in forward: value guard on self.steps (module attribute)" in message
    assert "the graphs had 0, 1 baked in" in message
    assert "Hint: Keep per-call Python state" in message


def test_assert_no_unstable_guards_fails_on_the_recompile_limit():
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(UnstableGuardError, match="hit torch._dynamo.config.recompile_limit"):
            assert_no_unstable_guards(zoo.scale, [torch.ones(n) for n in (2, 3, 4, 5)],
                                      dynamic=False)


def test_known_good_code_has_no_unstable_guards():
    report = assert_no_unstable_guards(zoo.MLP(), [torch.ones(b, 8) for b in (2, 3, 4)])
    assert len(report.recompiles) == 1  # static, then the batch dimension went dynamic


def test_the_reference_model_decode_step_has_no_unstable_guards(tiny_cfg, tiny_params):
    cache = new_cache(tiny_cfg, batch_size=2)
    token = torch.zeros(2, 1, dtype=torch.long)

    @torch.no_grad()
    def decode(params, token, input_pos, cache):
        return forward(params, token, cfg=tiny_cfg, input_pos=input_pos, cache=cache)

    steps = [(tiny_params, token, torch.tensor([pos]), cache) for pos in range(6)]
    report = assert_no_unstable_guards(decode, steps)
    assert len(report.events) == 1
