import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fullgraph.checks import suite
from fullgraph.checks.cli import main

HERE = Path(__file__).resolve().parent
SCRIPT = "targets/breaks_and_recompiles.py"


@pytest.fixture(autouse=True)
def _in_tests_dir(monkeypatch):
    # Targets are named relative to tests/checks, as a user names them from their project.
    monkeypatch.chdir(HERE)
    # `-m` runs the module afresh as __main__; an earlier import would make runpy warn.
    monkeypatch.delitem(sys.modules, "targets.report_module", raising=False)


def test_a_script_runs_as_main_with_its_arguments(tmp_path, capsys):
    argv, path = sys.argv[:], sys.path[:]
    assert main(["report", "-o", str(tmp_path / "r.json"), "--", SCRIPT, "2", "3", "4"]) == 0

    out, err = capsys.readouterr()
    assert "argv ['2', '3', '4']" in out and err.endswith(f"wrote {tmp_path / 'r.json'}\n")
    assert (sys.argv, sys.path) == (argv, path)
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["exit"] == {"status": "ok", "exception": None} and data["target"] == SCRIPT
    assert data["command"].endswith(f"-- {SCRIPT} 2 3 4")
    [brk] = data["graph_breaks"]
    assert brk["count"] == 3 and brk["frames"][0]["filename"] == SCRIPT
    assert brk["frames"][0]["line"] == 'print("scaling", tuple(y.shape))  # break: print'
    assert [c["compile_id"] for c in data["compiles"] if c["function"] == "scale"] == ["0/0", "0/1", "0/2"]
    assert data["summary"]["recompiles"] == 4  # scale and the rest of it after the print, twice each


def test_markdown_goes_to_stdout_after_the_programs_output(capsys):
    assert main(["report", "--", SCRIPT]) == 0
    out = capsys.readouterr().out
    program, _, report = out.partition("**Suggested issue title:** ")
    assert program.splitlines() == ["scaling (2,)", "scaling (3,)", "argv []"]
    assert report.startswith(f"torch.compile: 1 graph break, 2 recompiles in {SCRIPT}\n")
    assert f"```sh\nfullgraph report -- {SCRIPT}\n```" in report


def test_a_report_is_written_when_the_program_raises(tmp_path, capsys):
    assert main(["report", "-o", str(tmp_path / "r.md"), "--", "targets/raises.py"]) == 1

    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err and "ValueError: boom: total 3.0" in err
    assert "runpy" not in err and "_target.py" not in err  # the program's frames, not ours
    text = (tmp_path / "r.md").read_text()
    assert "| ended | exception (ValueError: boom: total 3.0) |" in text
    assert "Unsupported Tensor.item() call" in text


def test_a_report_is_written_when_the_program_exits_non_zero(tmp_path):
    assert main(["report", "-o", str(tmp_path / "r.json"), "--", "targets/exits.py"]) == 3
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["exit"] == {"status": "exit 3", "exception": None}
    assert data["graph_breaks"][0]["frames"][0]["function"] == "shout"


def test_dash_m_runs_a_module_as_main(capsys):
    assert main(["report", "--format", "json", "--", "-m", "targets.report_module", "a", "b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("argv ['a', 'b']\n")
    data = json.loads(out[out.index("{"):])
    assert data["target"] == "-m targets.report_module"
    assert [f["function"] for f in data["graph_breaks"][0]["frames"]] == ["forward", "_describe"]


def test_module_colon_function_is_imported_and_called(tmp_path):
    assert main(["report", "-o", str(tmp_path / "r.html"), "--", "targets.report_module:main"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "torch.compile: 1 graph break in targets.report_module:main" in page
    assert '<div class="timeline">' in page


def test_the_documented_example_still_breaks_as_documented(capsys):
    # docs/report-example.md was made from this program.
    assert main(["report", "--format", "json", "--", "targets/decode_loop.py"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out[out.index("{"):])
    assert [(brk["frames"][-1]["function"], brk["count"]) for brk in data["graph_breaks"]] == [
        ("rotate", 3), ("log_step", 3)]


@pytest.mark.parametrize("argv, error", [
    ([], "TARGET is missing: give `script.py [args]`, `-m module [args]` or `module:function`"),
    (["--"], "TARGET is missing"),
    (["--", "missing.py"], "TARGET: no such file: 'missing.py'"),
    (["--", "targets.absent:main"],
     "TARGET: cannot import 'targets.absent' for 'targets.absent:main': ModuleNotFoundError"),
    (["--", "targets.report_module:absent"], "TARGET: 'targets.report_module' has no attribute 'absent'"),
    (["--", "targets.report_module:main", "x"], "TARGET: targets.report_module:main is called with no"),
    (["--", "-m"], "TARGET: -m needs a module name"),
    (["--", "-m", "targets.absent"], "TARGET: no module named 'targets.absent'"),
    (["-o", "r.txt", "--", SCRIPT], "-o r.txt: the extension must be .md, .json or .html (or give --format)"),
])
def test_command_line_mistakes_are_one_line_naming_the_argument(argv, error, capsys):
    assert main(["report", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"fullgraph report: {error}")
    assert captured.err.count("\n") == 1


def test_an_unknown_format_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "--format", "pdf", "--", SCRIPT])
    assert info.value.code == 2 and "--format: invalid choice: 'pdf'" in capsys.readouterr().err


def test_the_command_exits_with_the_programs_exit_code(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fullgraph.checks.cli", "report", "-o",
                          str(tmp_path / "r.md"), "--", "targets/exits.py"],
                         cwd=HERE, capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert "| ended | exit 3 |" in (tmp_path / "r.md").read_text()


def test_check_writes_its_results_by_extension(tmp_path, monkeypatch, capsys):
    result = suite.CheckResult("params match the config", True, "9 tensors", 0.5)

    def run_checks(target, on_result):
        on_result(result)
        return [result]

    monkeypatch.setattr(suite, "build_target", lambda **options: SimpleNamespace(label="tiny on cpu"))
    monkeypatch.setattr(suite, "run_checks", run_checks)
    assert main(["check", "-o", str(tmp_path / "c.json")]) == 0
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["kind"] == "check-results" and data["target"] == "tiny on cpu"
    assert data["results"] == [result.to_dict()] and data["command"].startswith("fullgraph check -o ")
    capsys.readouterr()
    assert main(["check", "-o", "results.txt"]) == 2
    assert capsys.readouterr().err == "fullgraph check: -o results.txt: the extension must be .md, .json or .html\n"
