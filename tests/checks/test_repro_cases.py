"""Every graph break and recompile the project's tests know, through `fullgraph report --repro`'s
builder and verifier: each gets a script that reproduces it on its own (the same line and gb_type,
or a recompile on the same guard), or the report says why it cannot stand alone.

The cases are zoo.py's breaks, recompile_zoo.py's recompiles, the programs under targets/ that
can run in this process (targets/crashes.py through `fullgraph report`), and the breaks test_sdpa.py, test_grad_modes.py and test_collectives.py
write for themselves (copied below, each marked `# break: <name>`). The scripts run here on a
fresh dynamo, as the reduction worker runs its tries: about a second a case, where a
fresh interpreter costs a torch import each; test_repro.py runs scripts in fresh interpreters.
"""

import contextlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_versions import per_torch

import recompile_zoo
import zoo
from fullgraph.checks import repro_reduce
from fullgraph.checks.cli import main
from fullgraph.checks.report import (
    RecordedReport,
    Report,
    render_html,
    render_markdown,
    with_repros,
)
from fullgraph.checks.repro import (
    NOT_ON_ITS_OWN,
    NOT_WRITTEN,
    REPRODUCES,
    TAIL_LINES,
    make_repros,
    verdict,
)
from fullgraph.checks.repro_record import DEFAULT_STATE, InputRecorder, global_state_kept
from fullgraph.checks.watch import watch
from fullgraph.model.launch import fake_process_group
from targets import report_module

SOURCE = Path(__file__).resolve()
TARGETS = SOURCE.parent / "targets"


def line_of(marker: str, source: Path = SOURCE) -> int:
    return next(number for number, line in enumerate(source.read_text().splitlines(), start=1)
                if line.rstrip().endswith(f"# break: {marker}"))


# -- the breaks other tests write for themselves ---------------------------------------------

def old_context_manager(q, k, v):  # test_sdpa.py's
    with torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False):  # break: sdp_kernel
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def reads_a_value(q, k, v):  # test_sdpa.py's
    kernels = [SDPBackend.FLASH_ATTENTION] if q.abs().max() < 100 else [SDPBackend.MATH]  # break: kernels
    with sdpa_kernel(kernels):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def speaks_when_evaluating(x, w):  # test_grad_modes.py's
    y = x @ w
    if torch.is_grad_enabled():
        return y.sum()
    print("evaluating")  # break: evaluating
    return y.sum()


def loss(x, w):  # test_grad_modes.py's, recompiled under inference_mode
    return torch.tanh(x @ w).pow(2).sum()


def async_all_reduce(x):  # test_collectives.py's
    y = x * 2
    work = dist.all_reduce(y, async_op=True)  # break: async
    work.wait()
    return y + 1


def announces(x):
    # No op around the break: inductor, given no graph, compiles nothing, in the program and the
    # script alike.
    print("announcing")  # break: announces
    return x


# -- running a program, its repros verified in this process -----------------------------------

def _verify_here(path, confirm):
    """What repro.verify says of the script at `path` (and what `confirm` finds in its output),
    run in this process on a fresh dynamo (and the global state it may set put back)."""
    out = io.StringIO()
    torch.compiler.reset()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), \
                global_state_kept():
            runpy.run_path(os.fspath(path), run_name="__main__")
    except Exception as error:  # the script's AssertionError, or what the function raised
        return NOT_ON_ITS_OWN, f"{type(error).__name__}: {error}"
    finally:
        torch.compiler.reset()
    printed = out.getvalue()
    return verdict(printed, None, "\n".join(printed.splitlines()[-TAIL_LINES:]), confirm)


@pytest.fixture
def repros_of(tmp_path, monkeypatch):
    """The report data and repros (unreduced) of running `program()` in this process."""
    monkeypatch.setattr(repro_reduce, "verify_all",
                        lambda paths, *, timeout, confirms: [
                            _verify_here(path, confirm) for path, confirm in zip(paths, confirms)])

    def run(program):
        torch.compiler.reset()
        with watch() as seen, InputRecorder().recording() as recorder:
            with contextlib.redirect_stdout(io.StringIO()):
                program()
        data = Report(seen, command="python prog.py").to_dict()
        torch.compiler.reset()
        return data, recorder.to_dict(), make_repros(data, recorder.to_dict(), tmp_path,
                                                     reduce=False)
    return run


def compiled(function, *calls, **options):
    """A program that compiles `function` (eager unless `options` say) and calls it with each
    argument tuple of `calls`."""
    def program():
        step = torch.compile(function, **{"backend": "eager", **options})
        for args in calls:
            step(*args)
    return program


def run_file(path, *argv, raises=()):
    """A program that runs the script at `path` as __main__, as `fullgraph report` would."""
    def program():
        saved = sys.argv[:]
        sys.argv[:] = [os.fspath(path), *argv]
        try:
            with contextlib.suppress(*raises):
                runpy.run_path(os.fspath(path), run_name="__main__")
        finally:
            sys.argv[:] = saved
    return program


def ones(*shape, **options):
    return torch.ones(*shape, **options)


def qkv():
    return tuple(torch.randn(1, 2, 8, 4) for _ in range(3))


def under_no_grad_after_grad(function, *args, mode=torch.no_grad):
    def program():
        step = torch.compile(function, backend="eager")
        step(*args)
        with mode():
            step(*args)
    return program


def under_global_state(function, *args, change):
    """A program that calls `function` compiled, then again after `change()` (the default dtype
    set, say), and puts the global state back."""
    def program():
        step = torch.compile(function, backend="eager")
        with global_state_kept():
            step(*args)
            change()
            step(*args)
    return program


def back_to_the_default_dtype():
    # The first compile had float64, the recompile torch's default: the script must set it back.
    step = torch.compile(recompile_zoo.scale, backend="eager")
    x = torch.randn(8)
    with global_state_kept():
        torch.set_default_dtype(torch.float64)
        step(x)
        torch.set_default_dtype(torch.float32)
        step(x)


def grad_then_dtype_then_input():
    # Three causes: grad mode; grad mode and default dtype at once; an argument's dtype.
    step = torch.compile(recompile_zoo.scale, backend="eager")
    x = torch.randn(8)
    with global_state_kept():
        step(x)
        with torch.no_grad():
            step(x)
        torch.set_default_dtype(torch.float64)
        step(x)
        step(x.double())


def in_a_fake_group(program):
    def run():
        with fake_process_group(2, rank=0):
            program()
    return run


def with_mark_dynamic_bounds():
    first = ones(3, 4)
    torch._dynamo.mark_dynamic(first, 0, min=2, max=11)
    step = torch.compile(recompile_zoo.rows_sum, backend="eager")
    step(first)
    step(ones(12, 4))


def at_the_recompile_limit():
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled(recompile_zoo.scale, *[(ones(size),) for size in range(2, 8)], dynamic=False)()


def raising_after_its_break():
    with contextlib.suppress(ValueError):
        compiled(zoo.raises_after_break, (ones(3),))()


# -- the cases ---------------------------------------------------------------------------------
#
# Each expects, in order, one entry per repro:
#   ("break", gb_type, (file, marker)): reproduces, the script's marked line being that source line
#   ("recompile", guarded name): reproduces, recompiling on the program's guard, one on that name
#                                (None: on torch's global state, grad mode)
#   (status, why): does not stand alone, saying why

# The deprecated SDPA context manager breaks the graph twice on 2.11 and 2.13 and once on 2.15;
# its gb_type changed at 2.14 (test_sdpa.py), taken here as where the count changed too.
OLD_CONTEXT_MANAGER_BREAKS = per_torch({(2, 11): 2, (2, 14): 1})
ITEM = "Unsupported Tensor.item() call with capture_scalar_outputs=False"
PRINT = "Failed to trace builtin operator"
ZOO, THIS = Path(zoo.__file__), SOURCE
NOT_OURS = (NOT_WRITTEN, "a script cannot rebuild")

BREAKS = [
    pytest.param(compiled(zoo.calls_unsupported_builtin, (ones(3),)),
                 [("break", PRINT, (ZOO, "builtin"))], id="builtin dir"),
    pytest.param(compiled(zoo.calls_c_function, (ones(3),)),
                 [("break", "Attempted to call function marked as skipped", (ZOO, "c function"))],
                 id="C function"),
    pytest.param(compiled(zoo.calls_ctypes, (ones(3),)),  # torch's gb_type for it varies
                 [("break", None, (ZOO, "ctypes"))], id="ctypes in a polyfill"),
    pytest.param(compiled(zoo.breaks_first, (ones(3),)),
                 [("break", PRINT, (ZOO, "first"))], id="first statement"),
    pytest.param(compiled(zoo.calls_helper_twice, (ones(3),)),
                 [("break", PRINT, (ZOO, "helper")), ("break", PRINT, (ZOO, "helper"))],
                 id="helper twice"),
    pytest.param(compiled(zoo.calls_helper_in_loop, (ones(3),)),
                 [("break", "graph break in loop", (ZOO, "helper"))], id="helper in a loop"),
    pytest.param(compiled(zoo.calls_disabled, (ones(3),)), [], id="disabled call"),
    pytest.param(compiled(zoo.breaks_three_times, (ones(3),)),
                 [("break", PRINT, (ZOO, "three 1")), ("break", ITEM, (ZOO, "three 2")),
                  ("break", "Data-dependent branching", (ZOO, "three 3"))], id="three breaks"),
    pytest.param(raising_after_its_break, [("break", PRINT, (ZOO, "before raise"))],
                 id="raises after its break"),
    pytest.param(compiled(zoo.Net(), (ones(2, 8),)),
                 [(NOT_WRITTEN, "argument `self` is a torch.nn.Module (zoo.PrintingBlock, 72 "
                                "parameters) that a script cannot rebuild")], id="module"),
    pytest.param(compiled(zoo.Scaler(2.0).scale, (ones(3),)),
                 [(NOT_WRITTEN, "argument `self` is a zoo.Scaler, which a script cannot rebuild")],
                 id="method"),
    pytest.param(compiled(zoo.clean, (ones(3),)), [], id="clean"),
    pytest.param(compiled(old_context_manager, qkv()),  # torch's gb_types for it vary
                 [("break", None, (THIS, "sdp_kernel"))] * OLD_CONTEXT_MANAGER_BREAKS,
                 id="sdpa old context manager"),
    pytest.param(compiled(reads_a_value, qkv()),
                 [("break", "Data-dependent branching", (THIS, "kernels"))], id="sdpa kernel from a value"),
    pytest.param(in_a_fake_group(compiled(async_all_reduce, (ones(4),))),
                 # The rest, work.wait(), needs the process group the program had.
                 [("break", "async_op=True for distributed collectives", (THIS, "async")),
                  (NOT_ON_ITS_OWN, "ValueError: Default process group has not been initialized")],
                 id="async collective"),
    pytest.param(run_file(TARGETS / "decode_loop.py"),
                 [("break", ITEM, (TARGETS / "decode_loop.py", None)),
                  ("break", PRINT, (TARGETS / "decode_loop.py", None)),
                  ("recompile", "x"),
                  (NOT_WRITTEN, "a recompile of dynamo's resume function for the rest of rotate"),
                  (NOT_WRITTEN, "a recompile of dynamo's resume function for the rest of decode"),
                  ("recompile", "x"),
                  (NOT_WRITTEN, "a recompile of dynamo's resume function for the rest of decode")],
                 id="targets/decode_loop.py"),
    pytest.param(run_file(TARGETS / "breaks_and_recompiles.py", "2", "3"),
                 [("break", PRINT, (TARGETS / "breaks_and_recompiles.py", "print")),
                  ("recompile", "x"),
                  (NOT_WRITTEN, "a recompile of dynamo's resume function for the rest of scale")],
                 id="targets/breaks_and_recompiles.py"),
    pytest.param(run_file(TARGETS / "reads_its_arguments.py", "loud"),
                 [("break", PRINT, (TARGETS / "reads_its_arguments.py", "print"))],
                 id="targets/reads_its_arguments.py"),
    pytest.param(run_file(TARGETS / "raises.py", raises=(ValueError,)),
                 # The raise follows from the tensor's values, which a script does not have.
                 [("break", ITEM, (TARGETS / "raises.py", "item")),
                  (NOT_ON_ITS_OWN, "AssertionError: expected a graph break 'Observed exception'")],
                 id="targets/raises.py"),
    pytest.param(run_file(TARGETS / "exits.py", raises=(SystemExit,)),
                 [("break", PRINT, (TARGETS / "exits.py", "print"))], id="targets/exits.py"),
    pytest.param(report_module.main, [("break", PRINT, (TARGETS / "report_module.py", "print"))],
                 id="targets/report_module.py"),
]

RECOMPILES = [
    pytest.param(compiled(recompile_zoo.StepCounter(), (ones(3),), (ones(3),), (ones(3),)),
                 [(NOT_WRITTEN, "argument `self` is a torch.nn.Module (recompile_zoo.StepCounter, "
                                "0 parameters) that a script cannot rebuild")],
                 id="module attribute"),
    pytest.param(compiled(recompile_zoo.repeat_add, *[(ones(3), times) for times in (1, 2, 3, 4)]),
                 [("recompile", "times")], id="int loop bound"),
    pytest.param(compiled(recompile_zoo.shift, *[(ones(3), offset) for offset in range(1, 6)]),
                 [("recompile", "offset")], id="int in arithmetic"),
    pytest.param(compiled(recompile_zoo.scale, (ones(3),), (ones(3, dtype=torch.float64),)),
                 [("recompile", "x")], id="dtype"),
    pytest.param(compiled(recompile_zoo.scale, (ones(3),), (ones(3, requires_grad=True),)),
                 [("recompile", "x")], id="requires_grad"),
    pytest.param(compiled(recompile_zoo.scale, *[(ones(size),) for size in (2, 3, 4)], dynamic=False),
                 [("recompile", "x")], id="dynamic=False sizes"),
    pytest.param(compiled(recompile_zoo.scale, (ones(3),), (ones(3, device="meta"),)),
                 [("recompile", "x")], id="device"),
    pytest.param(under_no_grad_after_grad(recompile_zoo.scale, ones(3)),
                 [("recompile", None)], id="grad mode"),
    pytest.param(under_no_grad_after_grad(loss, ones(4, 3), ones(3, 5, requires_grad=True),
                                          mode=torch.inference_mode),
                 [("recompile", None)], id="inference mode"),
    pytest.param(grad_then_dtype_then_input, [("recompile", None), ("recompile", None),
                                              ("recompile", "x")], id="grad mode, default dtype"),
    pytest.param(under_global_state(recompile_zoo.scale, ones(3),
                                    change=lambda: torch.set_default_dtype(torch.float64)),
                 [("recompile", None)], id="default dtype"),
    pytest.param(back_to_the_default_dtype, [("recompile", None)], id="back to the default dtype"),
    pytest.param(under_global_state(recompile_zoo.scale, ones(3),
                                    change=lambda: torch.use_deterministic_algorithms(True)),
                 [("recompile", None)], id="deterministic algorithms"),
    pytest.param(under_global_state(recompile_zoo.scale, ones(3),
                                    change=lambda: torch.set_autocast_enabled("cpu", True)),
                 [("recompile", None)], id="autocast"),
    pytest.param(under_global_state(recompile_zoo.scale, ones(3),
                                    change=lambda: torch.set_num_threads(1)),
                 [("recompile", None)], id="thread count"),
    pytest.param(with_mark_dynamic_bounds, [("recompile", "x")], id="outside mark_dynamic bounds"),
    pytest.param(compiled(recompile_zoo.rows_sum, *[(ones(size, 4),) for size in (2, 3, 1)]),
                 [("recompile", "x")], id="below a dynamic bound"),
    pytest.param(at_the_recompile_limit, [("recompile", "x")], id="recompile limit"),
    pytest.param(compiled(recompile_zoo.MLP(), *[(ones(batch, 8),) for batch in (2, 3, 4)]),
                 [(NOT_WRITTEN, "argument `self` is a torch.nn.Module (recompile_zoo.MLP, 280 "
                                "parameters) that a script cannot rebuild")],
                 id="module batch size"),
]


@pytest.mark.parametrize("program, expected", BREAKS + RECOMPILES)
def test_each_known_case_reproduces_on_its_own_or_says_why_not(program, expected, repros_of):
    data, _, repros = repros_of(program)
    assert len(repros) == len(expected), [(r["kind"], r["status"], r["why"]) for r in repros]
    for entry, want in zip(repros, expected, strict=True):
        if want[0] == "break":
            _assert_break_reproduces(entry, data["graph_breaks"][entry["break"] - 1], *want[1:])
        elif want[0] == "recompile":
            assert (entry["kind"], entry["status"]) == ("recompile", REPRODUCES), entry["why"]
            assert f"GUARDED = {want[1]!r}" in entry["script"]
        else:
            assert entry["status"] == want[0] and want[1] in entry["why"], entry["why"]
        # The compile call is known wherever the function's arguments were recorded: not for
        # dynamo's resume functions.
        assert (entry["compile_call"] is None) == ("resume function" in (entry["why"] or ""))


def test_a_program_that_kills_itself_after_its_break_gets_a_verified_repro(tmp_path, monkeypatch,
                                                                          capfd):
    # targets/crashes.py cannot run in this process: `fullgraph report` runs it in a child, as a
    # user would, and runs the script in a fresh interpreter. The break's function reads the
    # program's arguments, which its script passes on.
    monkeypatch.chdir(TARGETS.parent)
    command = ["report", "--no-reduce", "--repro", str(tmp_path / "repros"),
               "-o", str(tmp_path / "r.json"), "--", "targets/crashes.py", "segfault"]
    assert main(command) == 128 + signal.SIGSEGV
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["exit"]["status"] == "killed by SIGSEGV" and data["crash"]["signal"] == "SIGSEGV"
    [entry] = data["repros"]
    assert (entry["kind"], entry["status"]) == ("break", REPRODUCES), entry["why"]
    _assert_break_reproduces(entry, data["graph_breaks"][0], PRINT, (TARGETS / "crashes.py", "print"))
    assert "    sys.argv[1:] = ['segfault']  # the program's arguments, which its code reads\n" in entry["script"]
    # The report keeps the command that reproduces it all, the crash with it.
    markdown = render_markdown(RecordedReport(data))
    assert (f"```sh\nfullgraph {' '.join(command)}\n```" in markdown
            and "#### Break 1 (Failed to trace builtin operator)" in markdown)
    assert capfd.readouterr().err.endswith("1 of them reproduce on their own\n"
                                           f"fullgraph report: wrote {tmp_path / 'r.json'}\n")


def _assert_break_reproduces(entry, brk, gb_type, place):
    assert entry["status"] == REPRODUCES, entry["why"]
    assert entry["gb_type"] == brk["gb_type"] == (gb_type or brk["gb_type"])
    path, marker = place
    if marker is not None:
        assert brk["frames"][-1]["lineno"] == line_of(marker, path)
    # The script checks the gb_type at its copy of the breaking line, marked.
    script = entry["script"].splitlines()
    marked = next(number for number, text in enumerate(script, start=1)
                  if text.endswith("  # <- graph break"))
    assert script[marked - 1].removesuffix("  # <- graph break").strip() == brk["frames"][-1]["line"]
    assert f"LINE = {marked} " in entry["script"]
    assert f"GB_TYPE = {entry['gb_type']!r}" in entry["script"]


def test_a_break_only_under_no_grad_and_a_grad_mode_recompile(repros_of):
    data, _, repros = repros_of(under_no_grad_after_grad(speaks_when_evaluating, ones(4, 3),
                                                         ones(3, 5, requires_grad=True)))
    assert [entry["kind"] for entry in repros] == ["break", "recompile"]
    _assert_break_reproduces(repros[0], data["graph_breaks"][0], PRINT, (THIS, "evaluating"))
    grad_off = "torch.set_grad_enabled(False)  # as it was when dynamo compiled it"
    assert grad_off in repros[0]["script"]
    assert repros[1]["guard"] == "global state changed: grad_mode"
    assert repros[1]["status"] == REPRODUCES, repros[1]["why"]
    assert repros[1]["script"].index("torch.set_grad_enabled(True)") < repros[1]["script"].index(grad_off)


# -- torch.compile's mode and options ----------------------------------------------------------

@pytest.mark.parametrize("options, recorded, call", [
    ({"mode": "reduce-overhead"}, ("reduce-overhead", None, True), "mode='reduce-overhead',"),
    ({"mode": "max-autotune-no-cudagraphs"}, ("max-autotune-no-cudagraphs", None, False),
     "mode='max-autotune-no-cudagraphs',"),
    ({"options": {"epilogue_fusion": False}},
     (None, {"kind": "dict", "items": {"epilogue_fusion": {"kind": "value", "expression": "False"}}},
      False),
     "options={'epilogue_fusion': False},"),
    ({"backend": "aot_eager", "mode": "max-autotune"}, ("max-autotune", None, False),
     "mode='max-autotune',"),
])
def test_the_mode_and_options_the_program_gave_are_in_the_script(options, recorded, call,
                                                                  repros_of):
    _, frames, [entry] = repros_of(compiled(announces, (ones(3),), **{"backend": "inductor",
                                                                      **options}))
    record = frames["frames"][0]["compile"]
    assert (record["mode"], record["options"], record["cudagraphs"]) == recorded
    assert entry["status"] == REPRODUCES, entry["why"]
    assert f"        {call}\n" in entry["script"]
    # The report's JSON has them too, each option as the expression the script writes.
    assert entry["compile_call"] == {
        "backend": options.get("backend", "inductor"), "fullgraph": False, "dynamic": None,
        "mode": recorded[0], "options": recorded[1] and {"epilogue_fusion": "False"}}
    # Asked for CUDA graphs with CPU tensors: the script says why it runs anyway.
    assert ("# As the program called it. CUDA graphs need a GPU" in entry["script"]) == recorded[2]


def test_a_default_compile_call_has_no_mode_or_options(repros_of):
    _, frames, [entry] = repros_of(compiled(announces, (ones(3),), backend="inductor"))
    record = frames["frames"][0]["compile"]
    assert (record["mode"], record["options"], record["cudagraphs"]) == (None, None, False)
    assert ("torch.compile(announces, backend='inductor', fullgraph=False, dynamic=None)\n"
            in entry["script"])
    assert "mode=" not in entry["script"] and "options=" not in entry["script"]
    assert "sys.argv" not in entry["script"]  # its code reads no command-line arguments
    assert entry["compile_call"] == {"backend": "inductor", "fullgraph": False, "dynamic": None,
                                     "mode": None, "options": None}


def test_options_a_script_cannot_rebuild_are_left_out_and_named(repros_of):
    def custom_pass(graph):
        return None

    _, _, [entry] = repros_of(compiled(announces, (ones(3),), backend="inductor",
                                       options={"post_grad_custom_post_pass": custom_pass,
                                                "epilogue_fusion": False}))
    assert entry["status"] == REPRODUCES, entry["why"]
    assert ("        # left out of options: post_grad_custom_post_pass, which a script cannot "
            "rebuild\n        options={'epilogue_fusion': False},\n") in entry["script"]
    assert entry["compile_call"]["options"] == {"post_grad_custom_post_pass": None,
                                                "epilogue_fusion": "False"}


def test_a_callable_backend_becomes_eager_without_its_mode(repros_of):
    def backend(graph, example_inputs, **kwargs):
        return graph.forward

    _, _, [entry] = repros_of(compiled(announces, (ones(3),), backend=backend, mode="max-autotune"))
    assert "torch.compile(announces, backend='eager', fullgraph=False, dynamic=None)\n" in entry["script"]
    # The report still says what the program gave.
    assert entry["compile_call"] == {"backend": None, "fullgraph": False, "dynamic": None,
                                     "mode": "max-autotune", "options": None}


# -- the HTML page ----------------------------------------------------------------------------

def test_the_html_page_shows_each_verdict_and_the_verified_scripts_escaped(repros_of):
    def program():
        compiled(zoo.prints, (ones(3),))()
        compiled(zoo.Scaler(2.0).scale, (ones(3),))()

    data, _, repros = repros_of(program)
    report = with_repros(data, repros)
    page = render_html(report)
    assert "<h3>Standalone repros</h3>" in page
    assert "<p>One script per graph break and per recompile cause. Each needs only torch and was run in a fresh interpreter: 1 of 2 reproduce.</p>" in page
    verified, refused = repros
    assert (f'<h4>Break 1 (Failed to trace builtin operator): <code>{verified["file"]}</code></h4>'
            f"\n<p>Reproduces (not reduced).</p>") in page
    # The script whole, escaped: its quotes and the arrow of its mark.
    assert 'print(&quot;tracing&quot;, y.shape)  # break: print  # &lt;- graph break' in page
    assert "def main():" in page and '<pre><code>"""' not in page
    assert ("<li>Break 2 (Failed to trace builtin operator), no script: not written<pre>argument "
            "`self` is a zoo.Scaler, which a script cannot rebuild</pre></li>") in page
    # The Markdown shows the same verdicts.
    markdown = render_markdown(report)
    assert f"#### Break 1 (Failed to trace builtin operator): `{verified['file']}`" in markdown
    assert "- Break 2 (Failed to trace builtin operator), no script: not written: argument" in markdown


def test_an_html_page_without_repro_has_no_repro_section(repros_of):
    data, _, _ = repros_of(compiled(zoo.prints, (ones(3),)))
    assert data["repros"] is None and "Standalone repros" not in render_html(RecordedReport(data))
    page = render_html(with_repros(data, []))
    assert "<h3>Standalone repros</h3>\n<p>No graph break to write a repro for.</p>" in page


def test_a_script_sets_only_the_global_state_a_compile_had_otherwise(repros_of):
    _, _, repros = repros_of(grad_then_dtype_then_input)
    assert [entry["guard"] for entry in repros] == [
        "global state changed: grad_mode", "global state changed: grad_mode default_dtype",
        "dtype guard on x.dtype: expected Float, actual Double"]
    float64 = "torch.set_default_dtype(torch.float64)  # as it was when dynamo compiled it"
    assert float64 not in repros[0]["script"]
    # Before the recompile on the default dtype, it was torch's: set after, not before.
    calls = repros[1]["script"].partition("def main():")[2].partition("with recompiles_heard()")[0]
    before, _, after = calls.partition("compiled(*args, **kwargs)")
    assert float64 not in before and float64 in after
    # The dtype guard's two compiles both had float64.
    assert repros[2]["script"].count(float64) == 2
    # A default is set only where the replayed compiles differ in it: grad mode in the first
    # two scripts (back on after no_grad, in the second), the default dtype in the second.
    grad_on = DEFAULT_STATE["grad_mode"]
    assert grad_on in after and grad_on not in before
    differ = [{"grad_mode"}, {"grad_mode", "default_dtype"}, set()]
    for entry, names in zip(repros, differ, strict=True):
        assert {name for name, line in DEFAULT_STATE.items() if line in entry["script"]} == names


def test_the_default_state_is_a_fresh_interpreters(tmp_path):
    code = ("import json; from fullgraph.checks.repro_record import global_state; "
            "print(json.dumps(global_state()))")
    fresh = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True).stdout)
    assert {name: line for name, line in fresh.items() if name != "num_threads"} == DEFAULT_STATE
