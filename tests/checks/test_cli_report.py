import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fullgraph.checks import _report_run, suite
from fullgraph.checks._report_run import SAMPLE_S, TIMEOUT_CODE
from fullgraph.checks.cli import main
from fullgraph.checks.report import RecordedReport, render
from fullgraph.model.launch import Ended, Launched

HERE = Path(__file__).resolve().parent
SCRIPT = "targets/breaks_and_recompiles.py"
CRASHES = "targets/crashes.py"


@pytest.fixture(autouse=True)
def _in_tests_dir(monkeypatch):
    # Targets are named relative to tests/checks, as a user names them from their project.
    monkeypatch.chdir(HERE)
    # `-m` runs the module afresh as __main__; an earlier import would make runpy warn.
    monkeypatch.delitem(sys.modules, "targets.report_module", raising=False)


@pytest.fixture
def child_here(monkeypatch):
    """`fullgraph report` runs TARGET's child (_report_run.main) in this process, where it would
    start a Python for it: the same code records and writes the same report, without importing
    torch again. For the tests of what a report holds; those of how a child that crashes, hangs
    or is killed is reported, and one whole command line, start the real child."""
    monkeypatch.setattr(_report_run, "run_processes", _child_in_this_process)


def _child_in_this_process(commands, *, workdir, **options) -> Launched:
    [(_, _, *argv)] = commands  # ["-c", code, *argv]: main() reads sys.argv[1:] as python -c gives it
    saved = sys.argv[:]
    sys.argv[:] = ["-c", *argv]
    try:
        _report_run.main()
    except SystemExit as ended:
        code = ended.code
    finally:
        sys.argv[:] = saved
    return Launched((Ended(0, os.getpid(), code, None, ""),))


@pytest.mark.usefixtures("child_here")
def test_a_script_runs_as_main_with_its_arguments(tmp_path, capfd):
    argv, path = sys.argv[:], sys.path[:]
    assert main(["report", "-o", str(tmp_path / "r.json"), "--", SCRIPT, "2", "3", "4"]) == 0

    out, err = capfd.readouterr()
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


@pytest.mark.usefixtures("child_here")
def test_markdown_goes_to_stdout_after_the_programs_output(capfd):
    assert main(["report", "--", SCRIPT]) == 0
    out = capfd.readouterr().out
    program, _, report = out.partition("**Suggested issue title:** ")
    assert program.splitlines() == ["scaling (2,)", "scaling (3,)", "argv []"]
    assert report.startswith(f"torch.compile: 1 graph break, 2 recompiles in {SCRIPT}\n")
    assert f"```sh\nfullgraph report -- {SCRIPT}\n```" in report


@pytest.mark.usefixtures("child_here")
def test_a_report_is_written_when_the_program_raises(tmp_path, capfd):
    assert main(["report", "-o", str(tmp_path / "r.md"), "--", "targets/raises.py"]) == 1

    err = capfd.readouterr().err
    assert "Traceback (most recent call last):" in err and "ValueError: boom: total 3.0" in err
    assert "runpy" not in err and "_target.py" not in err  # the program's frames, not ours
    text = (tmp_path / "r.md").read_text()
    assert "| ended | exception (ValueError: boom: total 3.0) |" in text
    assert "Unsupported Tensor.item() call" in text


@pytest.mark.usefixtures("child_here")
def test_a_report_is_written_when_the_program_exits_non_zero(tmp_path):
    assert main(["report", "-o", str(tmp_path / "r.json"), "--", "targets/exits.py"]) == 3
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["exit"] == {"status": "exit 3", "exception": None}
    assert data["graph_breaks"][0]["frames"][0]["function"] == "shout"


@pytest.mark.usefixtures("child_here")
def test_dash_m_runs_a_module_as_main(capfd):
    assert main(["report", "--format", "json", "--", "-m", "targets.report_module", "a", "b"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("argv ['a', 'b']\n")
    data = json.loads(out[out.index("{"):])
    assert data["target"] == "-m targets.report_module"
    assert [f["function"] for f in data["graph_breaks"][0]["frames"]] == ["forward", "_describe"]


@pytest.mark.usefixtures("child_here")
def test_module_colon_function_is_imported_and_called(tmp_path):
    assert main(["report", "-o", str(tmp_path / "r.html"), "--", "targets.report_module:main"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "torch.compile: 1 graph break in targets.report_module:main" in page
    assert '<div class="timeline">' in page


@pytest.mark.usefixtures("child_here")
def test_the_documented_example_still_breaks_as_documented(capfd):
    # docs/report-example.md was made from this program.
    assert main(["report", "--format", "json", "--", "targets/decode_loop.py"]) == 0
    out = capfd.readouterr().out
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
    (["--timeout", "0", "--", SCRIPT], "--timeout must be > 0, got 0"),
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


def test_the_command_exits_with_the_programs_exit_code(tmp_path, run_python):
    [run] = run_python(["-m", "fullgraph.checks.cli", "report", "-o", str(tmp_path / "r.md"), "--",
                        "targets/exits.py"], timeout=180)
    assert run.returncode == 3, run.stderr
    assert "| ended | exit 3 |" in (tmp_path / "r.md").read_text()


# -- a program that does not end by itself ---------------------------------------------------------

@pytest.mark.parametrize("death, signum, where, taken", [
    ("segfault", signal.SIGSEGV, "# crashes here", "when it crashed"),
    ("abort", signal.SIGABRT, "DEATHS[sys.argv[1]]()", "when it crashed"),
    ("kill", signal.SIGKILL, "# sampled here",
     f"at the last sample, at most {SAMPLE_S:g} s before SIGKILL ended it"),
])
def test_a_program_killed_by_a_signal_still_leaves_its_report(death, signum, where, taken,
                                                              tmp_path, capfd):
    code = main(["report", "-o", str(tmp_path / "r.json"), "--", CRASHES, death])

    assert code == 128 + signum  # what a shell reports for a process the signal killed
    data = json.loads((tmp_path / "r.json").read_text())
    name = signal.Signals(signum).name
    assert data["exit"] == {"status": f"killed by {name}", "exception": None}
    assert data["crash"]["signal"] == name and data["crash"]["stack_taken"].startswith(taken)
    [brk] = data["graph_breaks"]  # met before the crash
    assert brk["frames"][-1]["line"] == 'print("about to", sys.argv[1], flush=True)  # break: print'
    # The main thread's stack comes first, at the line the program died on.
    main_thread = data["crash"]["stack"].split("\n\n")[0 if death == "kill" else 1]
    assert f'File "{CRASHES}", line {_line(HERE / CRASHES, where)}' in main_thread
    assert capfd.readouterr().out.startswith(f"about to {death}\n")


def test_a_program_that_hangs_is_stopped_at_the_timeout_with_its_stack(tmp_path, capfd):
    code = main(["report", "--timeout", "2", "-o", str(tmp_path / "r.md"), "--", CRASHES, "hang"])

    assert code == TIMEOUT_CODE
    text = (tmp_path / "r.md").read_text()
    assert "| ended | timed out after 2 s |" in text and "| graph breaks | 1 distinct |" in text
    stack = text.split("## Python stack when it was stopped\n\n```\n")[1].split("```")[0]
    assert stack.startswith("Current thread 0x")
    assert f'File "{CRASHES}", line {_line(HERE / CRASHES, "# hangs here")} in hang\n' in stack


def test_a_crash_report_renders_its_stack_in_every_format(tmp_path, capfd):
    assert main(["report", "-o", str(tmp_path / "r.json"), "--", CRASHES, "abort"]) == 134
    recorded = RecordedReport(json.loads((tmp_path / "r.json").read_text()))
    markdown, page = render(recorded, "md"), render(recorded, "html")
    assert "| ended | killed by SIGABRT |" in markdown
    assert "## Python stack when it crashed\n\n```\nFatal Python error: Aborted\n" in markdown
    assert "<h2>Python stack when it crashed</h2>\n<pre>Fatal Python error: Aborted" in page
    assert json.loads(render(recorded, "json")) == recorded.to_dict()


def _line(path: Path, marker: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), start=1)
                if marker in line)


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


# -- --repro and --compare -------------------------------------------------------------------------

@pytest.mark.usefixtures("child_here")
def test_repro_writes_a_verified_script_and_inlines_it(tmp_path, capfd):
    # Kept whole (--no-reduce): reducing, in the worker, is test_repro.py's.
    json_path = tmp_path / "r.json"
    assert main(["report", "--repro", str(tmp_path / "repros"), "--no-reduce", "-o", str(json_path),
                 "--", SCRIPT]) == 0
    assert "wrote 2 repros in " in capfd.readouterr().err  # the break and scale's recompile
    data = json.loads(json_path.read_text())
    repro, recompile, resumed = data["repros"]
    assert (recompile["status"], recompile["file"]) == ("reproduces", "recompile_1_scale.py")
    assert resumed["status"] == "not written" and "resume function" in resumed["why"]
    assert repro["status"] == "reproduces" and repro["why"] is None
    assert repro["file"] == "break_1_failed-to-trace-builtin-operator.py"
    assert (tmp_path / "repros" / repro["file"]).read_text() == repro["script"]
    assert repro["statements"] is None and "y = x * 2" in repro["script"]
    assert "torch.compile(scale, backend='eager', fullgraph=False, dynamic=False)" in repro["script"]
    markdown = render(RecordedReport(data), "md")
    assert "### Standalone repros" in markdown and "#### Break 1 (Failed to trace builtin operator): `break_1_" in markdown
    assert markdown.count("Reproduces (not reduced).") == 2  # --no-reduce: the break's and the recompile's
    assert markdown.index("```sh\nfullgraph report --repro") < markdown.index(repro["script"][:60])


def _reports(tmp_path, capfd) -> tuple[dict, Path]:
    """This run's JSON report of SCRIPT, and its path."""
    path = tmp_path / "new.json"
    assert main(["report", "-o", str(path), "--", SCRIPT]) == 0
    capfd.readouterr()
    return json.loads(path.read_text()), path


@pytest.mark.usefixtures("child_here")
def test_compare_prints_new_gone_and_changed_and_exits_1_only_on_new(tmp_path, capfd):
    new, new_path = _reports(tmp_path, capfd)
    old = {**new, "graph_breaks": [], "env": {**new["env"], "torch": "2.12.0"},
           "compiles": new["compiles"] + [c for c in new["compiles"] if c["recompile"]]}
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))

    assert main(["report", "--compare", str(old_path), "--against", str(new_path)]) == 1
    out = capfd.readouterr().out
    assert f"torch {new['env']['torch']} (this run) against torch 2.12.0 (the earlier one)." in out
    assert f"### New graph breaks\n\n- `{SCRIPT}:10` in `scale`: Failed to trace builtin operator (2 times)" in out
    assert "### Changed recompile causes\n\n- `scale` (" in out and "- `scale (resumed)` (" in out
    assert "- `scale` (targets/breaks_and_recompiles.py): size guard on x.size()[0]: 2 recompiles before, 1 now" in out
    assert main(["report", "--compare", str(new_path), "--against", str(old_path)]) == 0
    assert "### Gone graph breaks" in capfd.readouterr().out
    assert main(["report", "--compare", str(new_path), "--against", str(new_path)]) == 0
    assert capfd.readouterr().out.endswith("Nothing new, gone or changed.\n")


def test_compare_takes_an_installed_packages_file_in_another_venv_for_the_same_file(tmp_path, capfd):
    new = {"kind": "compile-report", "env": {"torch": "2.13.0"}, "compiles": []}
    new_path = tmp_path / "new.json"
    # As a report older than schema 5 wrote them: where that venv had the package.
    installed = "<site-packages>/pkg/layers.py"
    venv = "/home/me/venv-2.12/lib/python3.11/site-packages/pkg/layers.py"
    brk = {"gb_type": "Data-dependent branching", "count": 1, "disabled": False,
           "frames": [{"filename": installed, "lineno": 7, "function": "forward", "line": ""}]}
    old_brk = {**brk, "frames": [{**brk["frames"][0], "filename": venv}]}
    new_path.write_text(json.dumps({**new, "graph_breaks": [brk]}))
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps({**new, "graph_breaks": [old_brk]}))
    assert main(["report", "--compare", str(old_path), "--against", str(new_path)]) == 0
    assert capfd.readouterr().out.endswith("Nothing new, gone or changed.\n")
    moved = {**old_brk, "frames": [{**old_brk["frames"][0], "filename": "/src/pkg/layers.py"}]}
    old_path.write_text(json.dumps({**new, "graph_breaks": [moved]}))
    assert main(["report", "--compare", str(old_path), "--against", str(new_path)]) == 1
    assert f"### New graph breaks\n\n- `{installed}:7` in `forward`" in capfd.readouterr().out


@pytest.mark.usefixtures("child_here")
def test_compare_after_a_run_exits_1_when_a_break_is_new(tmp_path, capfd):
    new, _ = _reports(tmp_path, capfd)
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps({**new, "graph_breaks": []}))
    assert main(["report", "--compare", str(old_path), "--", SCRIPT]) == 1
    out = capfd.readouterr().out
    assert out.index("**Suggested issue title:**") < out.index("## Compared with the earlier report")
    assert "### New graph breaks" in out


@pytest.mark.parametrize("argv, error", [
    (["--compare", "missing.json", "--", SCRIPT], "--compare missing.json: cannot read it"),
    (["--compare", SCRIPT, "--", SCRIPT], f"--compare {SCRIPT}: not JSON"),
    (["--against", "new.json", "--", SCRIPT], "--against needs --compare and takes no TARGET"),
    (["--no-reduce", "--", SCRIPT], "--no-reduce needs --repro DIR"),
])
def test_compare_and_repro_mistakes_name_the_option_and_file(argv, error, capsys):
    assert main(["report", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"fullgraph report: {error}")


# Over a minute, most of it dynamo tracing transformers' generate (30 compiles) in the child:
# the pinned torch's; test_repro_cases.py runs the repros' torch-dependent cases on every torch.
@pytest.mark.slow
def test_repro_end_to_end_on_transformers_generate_behind_a_users_wrapper(tmp_path, capfd):
    transformers = pytest.importorskip("transformers")
    json_path = tmp_path / "r.json"
    assert main(["report", "--repro", str(tmp_path / "repros"), "--no-reduce", "-o", str(json_path),
                 "--", "targets/hf_generate.py"]) == 0
    assert "generated (1, 7)" in capfd.readouterr().out
    data = json.loads(json_path.read_text())
    # transformers' files are named as installed, at the version the environment block gives,
    # and only the user's function's source is copied into the report.
    assert data["packages"] == {"transformers": transformers.__version__}
    assert any(frame["filename"].startswith("<site-packages>/transformers/")
               for brk in data["graph_breaks"] for frame in brk["frames"])
    assert [source["function"] for source in data["reproduction"]["sources"]] == ["clean_prompt"]
    repros = data["repros"]
    # The wrapper's own break stands alone and reproduces in a fresh interpreter.
    wrapper = repros[0]
    assert (wrapper["status"], wrapper["gb_type"]) == ("reproduces", "Data-dependent branching")
    assert "def clean_prompt(input_ids, pad_id):" in wrapper["script"]
    assert "transformers" not in wrapper["script"].split('"""')[2]  # needs only torch
    assert "# break: the wrapper's data-dependent branch  # <- graph break" in wrapper["script"]
    assert wrapper["statements"] is None and wrapper["tries"] == 0  # --no-reduce: kept whole
    # Those inside generate take the model or transformers' objects: no script, and why.
    inside = [repro for repro in repros[1:] if repro["kind"] == "break"]
    assert inside and all(repro["status"] == "not written" for repro in inside)
    assert "argument `self` is a torch.nn.Module (transformers.models.llama.modeling_llama." \
           "LlamaForCausalLM, 4,400 parameters) that a script cannot rebuild" in inside[0]["why"]
