import json
import os
import subprocess
import sys

import pytest
import torch

import repro_cases
import zoo
from fullgraph.checks import repro
from fullgraph.checks._repro_worker import ReproWorker
from fullgraph.checks.report import Report
from fullgraph.checks.repro import NOT_ON_ITS_OWN, NOT_WRITTEN, REPRODUCES, make_repros, verify
from fullgraph.checks.repro_markdown import repros_markdown
from fullgraph.checks.repro_recompile import HEARD, same_guard
from fullgraph.checks.repro_record import InputRecorder, describe
from fullgraph.checks.repro_reduce import ddmin
from fullgraph.checks.watch import watch


def _repros(tmp_path, calls, *, reduce=False, **compile_options):
    # Reduction unbounded in time: how far it gets then depends on its tries, not on the load.
    """Report and repros for each (function, args) in `calls`, compiled as `compile_options`
    say (eager backend unless given)."""
    torch._dynamo.reset()
    with watch() as seen, InputRecorder().recording() as recorder:
        for function, args in calls:
            torch.compile(function, **{"backend": "eager", **compile_options})(*args)
    data = Report(seen, command="python prog.py").to_dict()
    torch._dynamo.reset()
    return data, recorder.to_dict(), make_repros(data, recorder.to_dict(), tmp_path, reduce=reduce,
                                                 reduce_seconds=float("inf"))


def test_a_tensor_is_described_by_shape_strides_dtype_device_and_grad():
    x = torch.ones(2, 3, requires_grad=True).t()
    assert describe(x) == {"kind": "tensor", "shape": [3, 2], "stride": [1, 3], "dtype": "float32",
                           "device": "cpu", "requires_grad": True, "values": None}
    assert describe(torch.arange(3))["values"] == [0, 1, 2]  # small integer tensors keep values
    assert describe(torch.arange(100))["values"] is None


def test_python_values_modules_and_other_objects_are_described():
    assert describe((1, None, "a", [2.5, float("nan")], {"k": True})) == {"kind": "tuple", "items": [
        {"kind": "value", "expression": "1"}, {"kind": "value", "expression": "None"},
        {"kind": "value", "expression": "'a'"},
        {"kind": "list", "items": [{"kind": "value", "expression": "2.5"},
                                   {"kind": "value", "expression": "float('nan')"}]},
        {"kind": "dict", "items": {"k": {"kind": "value", "expression": "True"}}}]}
    linear = describe(torch.nn.Linear(4, 2))
    assert linear["expression"] == "torch.nn.Linear(in_features=4, out_features=2, bias=True)"
    big = describe(zoo.Net())
    assert big["kind"] == "module" and big["expression"] is None and big["parameters"] == 72
    assert describe(repro_cases.Settings(2.0)) == {"kind": "opaque", "type": "repro_cases.Settings"}


def test_the_arguments_are_recorded_when_dynamo_compiles_the_frame_that_breaks():
    recorded = _recorded(zoo.reads_item, torch.ones(2, 3))
    [frame] = recorded["frames"]
    assert frame["function"] == "reads_item" and frame["filename"] == str(zoo.SOURCE)
    assert frame["compile"] == {"backend": "eager", "fullgraph": False, "dynamic": False,
                                "mode": None, "options": None, "cudagraphs": False}
    [argument] = frame["arguments"]
    assert argument["name"] == "x" and argument["value"]["shape"] == [2, 3]


def _recorded(function, *args):
    torch._dynamo.reset()
    with InputRecorder().recording() as recorder:
        torch.compile(function, backend="eager", dynamic=False)(*args)
    torch._dynamo.reset()
    return recorder.to_dict()


@pytest.mark.parametrize("function, marker, gb_type", [
    (zoo.prints, "print", "Failed to trace builtin operator"),
    (zoo.reads_item, "item", "Unsupported Tensor.item() call with capture_scalar_outputs=False"),
    (zoo.branches_on_data, "if", "Data-dependent branching"),
])
def test_a_known_break_gets_a_script_that_reproduces_in_a_fresh_interpreter(
        function, marker, gb_type, tmp_path):
    data, _, [repro] = _repros(tmp_path, [(function, (torch.ones(3),))])
    assert data["graph_breaks"][0]["frames"][-1]["lineno"] == zoo.line_of(marker)
    assert repro["status"] == REPRODUCES, repro["why"]
    assert repro["gb_type"] == gb_type and repro["file"].startswith("break_1_")
    script = (tmp_path / repro["file"]).read_text()
    assert script == repro["script"] and f"GB_TYPE = {gb_type!r}" in script
    # The check is on the line of the function's breaking line, marked, in the script.
    marked = next(number for number, line in enumerate(script.splitlines(), start=1)
                  if line.endswith("# <- graph break"))
    assert f"LINE = {marked} " in script and f"# break: {marker}" in script.splitlines()[marked - 1]


def test_a_break_in_a_helper_is_reproduced_from_the_helper_compiled_on_its_own(tmp_path):
    _, recorded, [repro] = _repros(tmp_path, [(zoo.calls_helpers, (torch.ones(3),))])
    assert {frame["function"] for frame in recorded["frames"]} >= {"calls_helpers", "_log"}
    assert repro["status"] == REPRODUCES, repro["why"]
    assert "def _log(x):" in repro["script"] and "def calls_helpers" not in repro["script"]


def test_the_script_asserts_the_line_and_fails_when_the_break_moves(tmp_path):
    _, _, [repro] = _repros(tmp_path, [(zoo.prints, (torch.ones(3),))])
    path = tmp_path / repro["file"]
    # The break is still there, one line lower: the script must say it is not where it was.
    path.write_text(repro["script"].replace('    print("tracing"', '    y = y + 0\n    print("tracing"'))
    status, why = verify(path)
    assert status == NOT_ON_ITS_OWN and "AssertionError: expected a graph break" in why


def test_a_function_using_a_global_the_script_cannot_rebuild_does_not_reproduce_on_its_own(tmp_path):
    _, _, [repro] = _repros(tmp_path, [(repro_cases.uses_table, (torch.ones(3),))])
    assert repro["status"] == NOT_ON_ITS_OWN
    assert "NameError: name 'TABLE' is not defined" in repro["why"]
    assert "OFFSET" not in repro["script"]  # only what the function uses is copied


def test_an_argument_the_script_cannot_rebuild_means_no_script_and_says_which(tmp_path):
    _, _, [repro] = _repros(tmp_path, [(repro_cases.takes_settings,
                                        (torch.ones(3), repro_cases.Settings(2.0)))])
    assert repro["status"] == NOT_WRITTEN and repro["file"] is None and not list(tmp_path.iterdir())
    assert repro["why"] == ("argument `settings` is a repro_cases.Settings, which a script cannot "
                            "rebuild")


def test_strides_and_constants_of_the_file_are_rebuilt(tmp_path):
    _, _, [repro] = _repros(tmp_path, [(repro_cases.strided, (torch.ones(2, 3).t(), 4))])
    assert repro["status"] == REPRODUCES, repro["why"]
    assert "tensor((3, 2), (1, 3), torch.float32, 'cpu'), 4, " in repro["script"]


def _marked(script):
    """The script's line marked as the break's, without the mark, and its number."""
    number = next(number for number, line in enumerate(script.splitlines(), start=1)
                  if line.endswith("  # <- graph break"))
    return script.splitlines()[number - 1].removesuffix("  # <- graph break"), number


def test_reduction_drops_the_statements_and_arguments_the_break_does_not_need(tmp_path):
    _, _, [repro] = _repros(tmp_path, [(repro_cases.pads, (torch.ones(3), 2.0, "unused"))],
                            reduce=True)
    assert repro["status"] == REPRODUCES, repro["why"]
    assert verify(tmp_path / repro["file"]) == (REPRODUCES, None)  # the reduced script, alone
    assert repro["statements"] == {"before": 4, "after": 2}  # y = ..., print(...)
    assert repro["arguments"] == {"before": 3, "after": 2}
    assert repro["tries"] > 0 and repro["tries_lost"] == 0
    script = repro["script"]
    assert "math.pi" not in script and "return y" not in script and "unused" not in script
    assert "def pads(x, scale):" in script and "OFFSET = 0.5" in script
    # The same break as the whole script's: the same gb_type, at the same line of the function.
    line, number = _marked(script)
    assert line.strip() == 'print("padding", y.shape)  # break: pads'
    assert f"LINE = {number} " in script and "GB_TYPE = 'Failed to trace builtin operator'" in script
    assert json.loads(json.dumps(repro)) == repro


def test_a_try_that_ends_the_worker_counts_as_not_reproducing_and_reduction_goes_on(tmp_path):
    # ddmin's first try drops `code = 0` and keeps `os._exit(code)`: the worker dies under it.
    _, _, [repro] = _repros(tmp_path, [(repro_cases.quits_when_cut, (torch.ones(3), 3))],
                            reduce=True)
    assert repro["tries_lost"] >= 1
    assert repro["status"] == REPRODUCES, repro["why"]
    assert repro["statements"] == {"before": 7, "after": 1} and repro["arguments"]["after"] == 1
    assert "os._exit" not in repro["script"] and "def quits_when_cut(x):" in repro["script"]
    assert _marked(repro["script"])[0].strip().startswith('print("quitting", x.shape)')


def test_the_worker_reports_a_script_that_hangs_or_crashes_and_starts_again(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(f"print({REPRODUCES!r})\n")
    (tmp_path / "hangs.py").write_text("import time\ntime.sleep(600)\n")
    (tmp_path / "crashes.py").write_text("import ctypes\n\nctypes.string_at(0)\n")
    (tmp_path / "raises.py").write_text("raise ValueError('no break here')\n")
    with ReproWorker() as worker:
        assert worker.run(good, timeout=60) == (REPRODUCES, None)
        assert worker.run(tmp_path / "hangs.py", timeout=1) == (
            NOT_ON_ITS_OWN, "timed out after 1 s (the worker was killed)")
        status, why = worker.run(tmp_path / "crashes.py", timeout=60)
        assert status == NOT_ON_ITS_OWN and why.startswith("the worker ended (signal SIGSEGV): ")
        assert 'crashes.py", line 3 in <module>' in why  # faulthandler's stack
        status, why = worker.run(tmp_path / "raises.py", timeout=60)  # the script's own error
        assert why.startswith("exit 1: Traceback") and why.endswith("ValueError: no break here")
        assert "_repro_worker" not in why  # the script's frames, as a fresh interpreter shows them
        assert worker.run(good, timeout=60) == (REPRODUCES, None)
        assert worker.lost == 2


def test_the_worker_puts_back_the_global_state_a_script_set(tmp_path):
    # A try that set float64 and no_grad must not be the next try's defaults, as it is not in
    # the fresh interpreter that gives the script's status.
    sets = tmp_path / "sets.py"
    sets.write_text("import torch\ntorch.set_default_dtype(torch.float64)\n"
                    f"torch.set_grad_enabled(False)\nprint({REPRODUCES!r})\n")
    reads = tmp_path / "reads.py"
    reads.write_text("import torch\nassert torch.get_default_dtype() == torch.float32\n"
                     f"assert torch.is_grad_enabled()\nprint({REPRODUCES!r})\n")
    with ReproWorker() as worker:
        assert worker.run(sets, timeout=60) == (REPRODUCES, None)
        assert worker.run(reads, timeout=60) == (REPRODUCES, None)


# Process plumbing alone: its scripts import nothing, so no torch can change the outcome.
@pytest.mark.slow
def test_fresh_interpreters_run_side_by_side_and_one_that_fails_stops_none_of_the_others(tmp_path):
    fails, slow = tmp_path / "fails.py", tmp_path / "slow.py"
    fails.write_text("raise SystemExit('gone')\n")
    # Past launch.GRACE_S after the other failed: run_processes' default would have stopped it.
    slow.write_text(f"import time\ntime.sleep(7)\nprint({REPRODUCES!r})\n")
    assert repro.verify_all([fails, slow, slow]) == [(NOT_ON_ITS_OWN, "exit 1: gone"), (REPRODUCES, None),
                                               (REPRODUCES, None)]


def test_ddmin_finds_a_minimal_set():
    tries = []

    def needs_3_and_5(parts):
        tries.append(parts)
        return 3 in parts and 5 in parts

    assert ddmin(list(range(8)), needs_3_and_5) == [3, 5]
    assert ddmin([1, 2], lambda parts: False) == [1, 2]
    assert len(tries) < 20


def test_a_recorded_path_is_the_absolute_path_of_the_code():
    recorded = _recorded(repro_cases.pads, torch.ones(2), 1.0, None)
    assert os.path.isabs(recorded["frames"][0]["filename"])


def test_a_recompile_gets_a_script_that_recompiles_on_the_same_guard(tmp_path):
    calls = [(repro_cases.doubles, (torch.ones(2), 3)), (repro_cases.doubles, (torch.ones(4), 3))]
    data, recorded, [repro] = _repros(tmp_path, calls, dynamic=False)
    assert sorted(recorded["frames"][0]["compiles"]) == ["0/0", "0/1"]
    assert data["compiles"][1]["failed_guards"] == [{"entry": "0/0", "kind": "size",
                                                     "source": "x.size()[0]"}]
    assert repro["kind"] == "recompile" and repro["compile"] == "0/1"
    assert repro["guard"] == "size guard on x.size()[0]: expected 2, actual 4"
    assert repro["status"] == REPRODUCES, repro["why"]
    assert "GUARD = 'size guard on x.size()[0]'" in repro["script"]
    assert repro["compile_call"] == {"backend": "eager", "fullgraph": False, "dynamic": False,
                                     "mode": None, "options": None}
    assert "GUARDED = 'x'" in repro["script"] and repro["file"] == "recompile_1_doubles.py"
    # Called once, it does not recompile: the script says so.
    path = tmp_path / repro["file"]
    first = "tensor((2,), (1,), torch.float32, 'cpu'), 3, "
    path.write_text(repro["script"].replace("tensor((4,), (1,), torch.float32, 'cpu'), 3, ", first))
    status, why = verify(path)
    assert status == NOT_ON_ITS_OWN and "AssertionError: expected doubles to recompile on a guard on x" in why


def test_a_recompile_script_that_recompiles_on_another_guard_does_not_reproduce(tmp_path):
    calls = [(repro_cases.doubles, (torch.ones(2), 3)), (repro_cases.doubles, (torch.ones(4), 3))]
    data, recorded, _ = _repros(tmp_path / "same", calls, dynamic=False)
    # The recompile's call given a float64 tensor of the first call's size: torch recompiles on a
    # guard on x still, but on its dtype, not its size.
    recorded["frames"][0]["compiles"]["0/1"][0]["value"].update(shape=[2], dtype="float64")
    [repro] = make_repros(data, recorded, tmp_path / "other", reduce=False)
    assert repro["status"] == NOT_ON_ITS_OWN
    assert repro["why"] == ("doubles recompiled on another guard: expected size guard on "
                            "x.size()[0] (as in the program), observed dtype guard on x.dtype (0/0: "
                            "tensor 'x' dtype mismatch. expected Float, actual Double)")
    # Run by hand, the script's own check passes (a guard on x), and it shows what torch said.
    path = tmp_path / "other" / repro["file"]
    ended = subprocess.run([sys.executable, path], capture_output=True, text=True, check=True)
    assert ended.stdout.endswith(f"{HEARD}\nRecompiling function doubles in {path}:14\n"
                                 f"    triggered by the following guard failure(s):\n"
                                 f"    - 0/0: tensor 'x' dtype mismatch. expected Float, actual "
                                 f"Double\n{REPRODUCES}\n")


def test_a_recompile_script_that_heard_no_guard_fail_does_not_reproduce():
    why = same_guard(f"{HEARD}\n{REPRODUCES}\n", function="f", expected=("size", "x.size()[0]"),
                     guard="size guard on x.size()[0]")
    assert why == "the script heard no guard fail when f recompiled; expected: size guard on x.size()[0]"


def test_recompile_reduction_keeps_the_guard_and_drops_what_the_recompile_does_not_need(tmp_path):
    calls = [(repro_cases.resizes, (torch.ones(2), "label", 0.5)),
             (repro_cases.resizes, (torch.ones(4), "label", 0.5))]
    _, _, [repro] = _repros(tmp_path, calls, dynamic=False, reduce=True)
    assert repro["kind"] == "recompile" and repro["status"] == REPRODUCES, repro["why"]
    assert repro["guard"] == "size guard on x.size()[0]: expected 2, actual 4"
    assert repro["statements"] == {"before": 3, "after": 1}
    assert repro["arguments"] == {"before": 3, "after": 1} and repro["tries"] > 0
    script = repro["script"]
    assert "def resizes(x):\n    y = x * 2\n" in script and "label" not in script.split("def main")[1]
    assert "GUARDED = 'x'" in script and verify(tmp_path / repro["file"]) == (REPRODUCES, None)
    # Both calls lost the arguments: the first with a tensor of 2, the second of 4.
    assert "(tensor((2,), (1,), torch.float32, 'cpu'), ), {}" in script
    assert "(tensor((4,), (1,), torch.float32, 'cpu'), ), {}" in script


def test_the_markdown_says_how_far_reduction_went_and_what_the_worker_lost():
    entry = {"kind": "recompile", "break": None, "gb_type": None, "compile": "0/1",
             "guard": "size guard on x.size()[0]: expected 2, actual 4", "file": "recompile_1_f.py",
             "status": REPRODUCES, "why": None, "statements": {"before": 3, "after": 1},
             "arguments": {"before": 3, "after": 1}, "tries": 9, "tries_lost": 2,
             "script": "print('reproduces')\n"}
    text = "\n".join(repros_markdown([entry], lambda text, language: text))
    assert ("Reproduces. Reduced from 3 statements to 1 and from 3 arguments to 1, in 9 tries, 2 "
            "of which hung or crashed the worker; the reduced script reproduces in a fresh "
            "interpreter.") in text
    text = "\n".join(repros_markdown([{**entry, "tries_lost": 0}], lambda text, language: text))
    assert "in 9 tries; the reduced script reproduces in a fresh interpreter." in text
    whole = {**entry, "statements": None, "arguments": None, "tries": 0, "tries_lost": 0}
    assert "Reproduces (not reduced)." in repros_markdown([whole], lambda text, language: text)
