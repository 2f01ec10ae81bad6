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
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert main(["check", "--device", "cuda"]) == 2
    assert "device: CUDA was asked for, but torch sees no CUDA device" in capsys.readouterr().err


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
