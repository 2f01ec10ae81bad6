import dataclasses
import json

import pytest
import torch

from fullgraph.checks import GradModeError, assert_grad_modes, grad_mode_matrix
from fullgraph.model import LlamaConfig, forward, init_params


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=generator)
    w = torch.randn(3, 5, generator=generator).requires_grad_()
    return x, w


def loss(x, w):
    return torch.tanh(x @ w).pow(2).sum()


def _line_of(text):
    source = open(__file__).read().splitlines()
    return next(number for number, line in enumerate(source, 1) if line.strip().startswith(text))


def test_switching_modes_costs_one_compile_per_mode_and_names_the_guard():
    report = assert_grad_modes(loss, make_inputs)
    assert [(r.mode, r.status, len(r.breaks), len(r.compiles)) for r in report.modes] == [
        ("train", "pass", 0, 1), ("no_grad", "pass", 0, 1), ("inference_mode", "pass", 0, 1)]
    assert report.mode("train").recompiled_by == ()
    assert report.mode("no_grad").recompiled_by == ("global state changed: grad_mode",)
    # inference_mode also changes every tensor argument's dispatch keys.
    assert report.mode("inference_mode").recompiled_by == ("dispatch_keys guard on w.device",
                                                           "global state changed: grad_mode")
    assert report.mode("train").grad_max_diff < 1e-6
    assert report.mode("no_grad").grad_max_diff is None
    assert json.loads(json.dumps(report.to_dict()))["modes"][1]["recompiled_by"] == [
        "global state changed: grad_mode"]
    lines = str(report).splitlines()
    assert lines[0] == "grad modes of loss (backend aot_eager)"
    assert lines[3].split()[:4] == ["no_grad", "pass", "0", "1"]
    assert lines[3].endswith("global state changed: grad_mode")


def test_the_order_of_the_modes_is_the_callers():
    report = grad_mode_matrix(loss, make_inputs, modes=["inference_mode", "train"])
    assert [r.mode for r in report.modes] == ["inference_mode", "train"]
    assert report.mode("train").recompiled_by == ("global state changed: grad_mode",)
    assert not report.failed


def speaks_when_evaluating(x, w):
    y = x @ w
    if torch.is_grad_enabled():
        return y.sum()
    print("evaluating")
    return y.sum()


def test_a_break_under_no_grad_only_fails_those_modes_at_its_line(capsys):
    with pytest.raises(GradModeError) as info:
        assert_grad_modes(speaks_when_evaluating, make_inputs)
    line = _line_of('print("evaluating")')
    entry = f"""\
       tests/checks/test_grad_modes.py:{line} in speaks_when_evaluating: Failed to trace builtin operator
         print("evaluating")
         Dynamo does not know how to trace builtin operator `print` with argument types ['str'] (has_kwargs False)"""
    assert str(info.value) == f"""\
2 of 3 grad modes failed for speaks_when_evaluating (limits: 0 graph breaks, 1 compile per mode, parity with eager)
  1. no_grad: 1 graph break (limit 0)
{entry}
  2. inference_mode: 1 graph break (limit 0)
{entry}
Hint: A break in one mode only comes from code that asks which mode it is in \
(torch.is_grad_enabled(), torch.is_inference_mode_enabled()): make both branches traceable, or \
keep the check out of the compiled function."""
    report = info.value.report
    assert report.mode("train").status == "pass"
    # The resumed rest of the function compiles once per mode as well, and is not over budget.
    assert len(report.mode("no_grad").compiles) == 2
    capsys.readouterr()


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # the derivative of x * x is 2 * x


def squares_wrongly_when_compiled(x, w):
    y = x @ w
    if torch.compiler.is_compiling():
        return WrongSquare.apply(y).sum()
    return (y * y).sum()


def detaches_when_compiled(x, w):
    y = x @ w
    if torch.compiler.is_compiling():
        y = y.detach()
    return (y * y).sum() + w.sum()


@pytest.mark.parametrize("fn", [squares_wrongly_when_compiled, detaches_when_compiled])
def test_gradients_that_differ_when_compiled_are_caught(fn):
    with pytest.raises(GradModeError) as info:
        assert_grad_modes(fn, make_inputs, modes=["train"])
    lines = str(info.value).splitlines()
    assert lines[0] == (f"1 of 1 grad modes failed for {fn.__name__} (limits: 0 graph breaks, "
                        "1 compile per mode, parity with eager)")
    assert lines[1] == "  1. train: gradients differ from eager: 1 of 1 tensor"
    assert lines[2].startswith("       w: max |diff| ")
    assert lines[2].endswith(" at torch.float32 (atol=1e-05, rtol=1e-05)")
    assert lines[3].startswith("Hint: A gradient differs, or exists on one side only")
    # The loss itself is the same: only the backward is wrong.
    assert info.value.report.mode("train").max_diff < 1e-5


def cuts_the_graph_when_compiled(x, w):
    y = x @ w
    return y.detach().sum() if torch.compiler.is_compiling() else y.sum()


def test_an_output_that_needs_no_grad_when_compiled_has_no_gradients():
    report = grad_mode_matrix(cuts_the_graph_when_compiled, make_inputs, modes=["train"])
    assert report.failed[0].problems == {"gradients": "gradients differ from eager: 1 of 1 tensor"}
    assert report.failed[0].details == ("w: no gradient when compiled, one in eager",)


CALLS = {"count": 0}


def counts_calls(x, w):
    # The count is baked into every graph, so every call fails a guard on it.
    CALLS["count"] += 1
    return (x @ w).sum() + 0 * CALLS["count"]


def test_a_guard_that_fails_on_every_call_costs_more_than_one_compile_per_mode():
    with pytest.raises(GradModeError) as info:
        assert_grad_modes(counts_calls, make_inputs, modes=["train", "no_grad"])
    message = str(info.value)
    assert "  1. train: counts_calls compiled 2 times (limit 1)\n" in message
    assert ("recompile 0/2 of tests/checks/test_grad_modes.py:"
            f"{_line_of('def counts_calls')} in counts_calls") in message
    assert "value guard on G['CALLS']['count']" in message
    assert "Hint: " in message and "Each mode needs one graph" in message


def test_the_compile_bound_is_the_callers():
    report = grad_mode_matrix(speaks_when_evaluating, make_inputs, max_breaks=1)
    assert not report.failed
    with pytest.raises(GradModeError, match=r"compiled 1 time \(limit 0\)"):
        assert_grad_modes(loss, make_inputs, modes=["no_grad"], max_compiles_per_mode=0)


def test_a_module_is_differentiated_by_its_parameters_and_their_grads_are_kept():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    kept = torch.ones(4, 3)
    module[0].weight.grad = kept
    precision = torch.get_float32_matmul_precision()
    report = assert_grad_modes(module, lambda: torch.randn(5, 3, generator=torch.Generator().manual_seed(1)))
    assert report.function == "Sequential.forward" and report.mode("train").grad_max_diff < 1e-6
    assert module[0].weight.grad is kept and module[2].bias.grad is None
    assert torch.get_float32_matmul_precision() == precision


def test_the_reference_model_has_no_breaks_and_exact_gradients_in_every_mode(highest_precision):
    cfg = dataclasses.replace(LlamaConfig.from_name("tiny"), n_layers=1)
    params = {name: p.requires_grad_() for name, p in init_params(cfg, seed=0).items()}
    tokens = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))

    def training_loss(params, tokens):
        logits = forward(params, tokens, cfg=cfg)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())

    report = assert_grad_modes(training_loss, lambda: (params, tokens), atol=1e-6, rtol=1e-6)
    assert [len(r.compiles) for r in report.modes] == [1, 1, 1]
    assert report.mode("train").grad_max_diff < 1e-6
    assert all(p.grad is None for p in params.values())


def returns_a_tuple(x, w):
    return x @ w, w


@pytest.mark.parametrize("fn, inputs, options, error, match", [
    (loss, make_inputs, {"modes": ["eval"]}, ValueError, r"modes must be distinct names from \['train'"),
    (loss, make_inputs, {"modes": "train"}, TypeError, "modes must be a sequence"),
    (loss, make_inputs, {"modes": []}, ValueError, "modes must be distinct names"),
    (loss, make_inputs, {"max_compiles_per_mode": -1}, ValueError, "max_compiles_per_mode must be >= 0"),
    (loss, make_inputs, {"max_breaks": True}, TypeError, "max_breaks must be an int"),
    (loss, make_inputs, {"backend": 3}, TypeError, "backend must be a backend name or a callable"),
    (loss, make_inputs, {"msg": 3}, TypeError, "msg must be a str or None"),
    (loss, make_inputs(), {}, TypeError, "make_inputs must be callable as make_inputs()"),
    (loss, lambda: (torch.ones(2, 3), torch.ones(3)), {}, ValueError, "make_inputs: train mode needs a tensor"),
    (returns_a_tuple, make_inputs, {}, TypeError, "fn must return a Tensor to be differentiated"),
    ("not callable", make_inputs, {}, TypeError, "fn must be callable"),
])
def test_misuse_raises_naming_the_argument(fn, inputs, options, error, match):
    with pytest.raises(error, match=match):
        assert_grad_modes(fn, inputs, **options)
