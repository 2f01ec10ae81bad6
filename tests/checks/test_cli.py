import functools

import pytest
import torch

from fullgraph.checks import suite
from fullgraph.checks.cli import main


def test_env_prints_the_environment_block(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch     {torch.__version__}" in out
    assert "python" in out and "platform" in out and "gpu" in out


def test_unknown_config_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit) as info:
        main(["check", "--config", "llama3"])
    assert info.value.code == 2
    assert "invalid choice: 'llama3'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the message for a machine without CUDA")
@pytest.mark.parametrize("command", ["check", "bench"])
def test_cuda_without_a_gpu_is_a_clear_error(capsys, command):
    assert main([command, "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"fullgraph {command}: --device cuda: CUDA was asked for, but torch "
                            f"sees no CUDA device\n")
    assert captured.out == ""


@pytest.mark.parametrize("command", ["check", "bench"])
def test_an_unknown_device_is_one_line_naming_it(capsys, command):
    assert main([command, "--device", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"fullgraph {command}: --device 'nope' is not a device: "
                                   f"Expected one of cpu, cuda")
    assert captured.err.count("\n") == 1 and captured.out == ""


def test_an_unknown_backend_is_refused_before_any_check_runs(capsys):
    assert main(["check", "--backend", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("fullgraph check: --backend must be one of [")
    assert "'eager'" in captured.err and "'inductor'" in captured.err
    assert captured.err.endswith("], got 'nope'\n") and captured.err.count("\n") == 1
    assert captured.out == ""


def _checks_that_record(ran: list, failing: str | None = None) -> list:
    """Every check of suite.CHECKS by name, each recording the target it ran on; `failing` fails."""
    def check_named(name):
        def check(target):
            ran.append((name, target.label))
            if name == failing:
                raise AssertionError(f"{name} failed\n  the whole message")
            return f"ran on {target.backend}"
        return check

    return [(name, check_named(name)) for name, _ in suite.CHECKS]


def test_check_runs_every_check_on_the_target_its_options_build(capsys, monkeypatch):
    # The command around the checks; each check passing on the reference model (generation, with
    # inductor, among them) is test_suite.py's.
    label = "tiny on cpu, float32, backend aot_eager"
    ran = []
    monkeypatch.setattr(suite, "run_checks",
                        functools.partial(suite.run_checks, checks=_checks_that_record(ran)))
    assert main(["check", "--backend", "aot_eager"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ran == [(name, label) for name, _ in suite.CHECKS]
    assert lines[0] == f"fullgraph check: {label}"
    for name, _ in suite.CHECKS:
        assert any(line.startswith(name) and " pass " in line and "ran on aot_eager" in line
                   for line in lines), name
    assert lines[-1].startswith(f"{len(suite.CHECKS)} passed, 0 failed in ")


def test_check_exits_one_and_prints_the_message_of_a_failing_check(capsys, monkeypatch):
    failing = suite.CHECKS[3][0]
    ran = []
    monkeypatch.setattr(suite, "run_checks", functools.partial(
        suite.run_checks, checks=_checks_that_record(ran, failing=failing)))
    assert main(["check", "--backend", "eager"]) == 1
    out = capsys.readouterr().out
    assert len(ran) == len(suite.CHECKS)  # the rest still ran
    assert any(line.startswith(failing) and " FAIL " in line and f" {failing} failed " in line
               for line in out.splitlines())
    assert f"\n== {failing} ==\n{failing} failed\n  the whole message\n" in out
    assert out.splitlines()[-1].startswith(f"{len(suite.CHECKS) - 1} passed, 1 failed in ")
