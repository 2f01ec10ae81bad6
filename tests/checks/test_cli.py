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


@pytest.mark.slow
def test_check_runs_every_check_and_exits_zero(run_python):
    [run] = run_python(["-m", "fullgraph.checks.cli", "check", "--backend", "aot_eager"],
                       timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "fullgraph check: tiny on cpu, float32, backend aot_eager"
    for name, _ in suite.CHECKS:
        assert any(line.startswith(name) and " pass " in line for line in lines), name
    assert lines[-1].startswith(f"{len(suite.CHECKS)} passed, 0 failed in ")
