"""What `fullgraph report --repro` needs from dynamo: the frame it compiles and how torch.compile
was called on it, the start of each compile, resume functions, and the script text that hears
torch's graph-break and recompile logs.

A repro script needs the arguments of the frame dynamo compiled when it broke; they are read off
the root instruction translator (`InstructionTranslator.current_tx()`, its `f_locals`) each time
dynamo starts tracing a frame. The log probes read the `graph_breaks` and `recompiles` artifacts'
first lines, in the wording of torch 2.11 to 2.15.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import missing
from .breaks import remove_resume_prefix
from .dynamo import backend_names, current_compile_id
from .hooks import ActiveHooks

__all__ = ["CompilingFrame", "compiling_frame", "compile_start_hook", "is_resume_code",
           "REPRO_BREAK_PROBE", "REPRO_RECOMPILE_PROBE"]


@dataclass(frozen=True)
class CompilingFrame:
    """The frame dynamo is compiling, as it was entered, and how torch.compile was called on it.

    backend: the name torch.compile was given, None for a callable backend; dynamic: as
    torch.compile's argument (False and True patch dynamo's config for the compile, None does not);
    mode and options: as torch.compile's arguments, None where not given (or "default");
    cudagraphs: whether they turn on inductor's CUDA graphs.
    """

    code: types.CodeType
    f_locals: dict[str, Any]
    backend: str | None
    fullgraph: bool
    dynamic: bool | None
    mode: str | None
    options: dict[str, Any] | None
    cudagraphs: bool


def compiling_frame() -> CompilingFrame | None:
    """The frame dynamo is compiling on this thread (the outermost, not an inlined call), or None
    outside a compile. Called from a graph_break_hook or compile_start_hook callback."""
    translator = getattr(torch._dynamo.symbolic_convert, "InstructionTranslator", None)
    try:
        tx = translator.current_tx()
    except AttributeError:  # no compile on this thread: the thread-local is unset
        return None
    return _frame_of(tx)


def _frame_of(tx: Any) -> CompilingFrame:
    # The backend reaches the translator wrapped (WrapBackendDebug), named after what was given.
    name = getattr(getattr(tx.output, "compiler_fn", None), "__name__", None)
    config = torch._dynamo.config
    dynamic = (False if not config.automatic_dynamic_shapes
               else True if not config.assume_static_by_default else None)
    mode, options, cudagraphs = _mode_and_options(getattr(tx.output, "compiler_fn", None))
    return CompilingFrame(tx.f_code, dict(tx.f_locals),
                          name if name in backend_names() else None, bool(tx.one_graph), dynamic,
                          mode, options, cudagraphs)


def _mode_and_options(compiler_fn: Any) -> tuple[str | None, dict[str, Any] | None, bool]:
    """torch.compile's mode and options, read back from the backend object it built, and whether
    they turn on inductor's CUDA graphs.

    A backend other than inductor (torch._TorchCompileWrapper) keeps them as given, in `kwargs`.
    Inductor's (torch._TorchCompileInductorWrapper) keeps only the config patches they make,
    merged in `config`; torch.compile refuses both at once, so patches equal to a mode's are
    that mode, and any others are the options.
    """
    given = getattr(compiler_fn, "_torchdynamo_orig_backend", compiler_fn)
    kwargs = getattr(given, "kwargs", None)
    if isinstance(kwargs, dict):
        return kwargs.get("mode"), kwargs.get("options"), False
    patches = getattr(given, "config", None)
    if not isinstance(patches, dict) or not patches or not hasattr(given, "apply_mode"):
        return None, None, False
    from torch._inductor import list_mode_options

    cudagraphs = bool(patches.get("triton.cudagraphs"))
    modes = list_mode_options(None, getattr(given, "dynamic", None))
    mode = next((name for name, options in modes.items()
                 if name != "default" and options == patches), None)
    return (mode, None, cudagraphs) if mode else (None, dict(patches), cudagraphs)


_COMPILE_START_HOOKS = ActiveHooks()


@contextlib.contextmanager
def compile_start_hook(callback: Callable[[CompilingFrame, str | None], None]) -> Iterator[None]:
    """Call `callback(frame, compile_id)` each time dynamo starts tracing a frame it compiles
    (again, with the same id, when a graph break restarts the trace), while inside. The callback
    runs inside dynamo's compile and must not raise."""
    translator = getattr(torch._dynamo.symbolic_convert, "InstructionTranslator", None)
    if translator is None or not hasattr(translator, "run"):
        raise missing("torch._dynamo.symbolic_convert.InstructionTranslator.run")

    def install() -> Callable[[], None]:
        original = translator.run

        @functools.wraps(original)
        def run(self, *args, **kwargs):
            _COMPILE_START_HOOKS.call(_frame_of(self), current_compile_id())
            return original(self, *args, **kwargs)

        translator.run = run
        return lambda: setattr(translator, "run", original)

    with _COMPILE_START_HOOKS.active(callback, install):
        yield


def is_resume_code(code: types.CodeType) -> bool:
    """Whether `code` is a resume function dynamo made for the rest of a function after a break."""
    return remove_resume_prefix(code.co_name) != code.co_name


def _log_probe(name: str, doc: str, artifact: str, emit: str) -> str:
    """The text of a context manager `name`, for a repro script: it turns on torch's log artifact
    `artifact` and yields a list that `emit` (a logging.Handler's emit body, indented 12) fills."""
    return f'''
@contextlib.contextmanager
def {name}():
    """{doc}"""
    heard = []

    class Heard(logging.Handler):
        def emit(self, record):
{emit}
    handler = Heard(logging.DEBUG)
    torch._logging.set_logs({artifact}=True)
    logging.getLogger("torch._dynamo").addHandler(handler)
    try:
        yield heard
    finally:
        logging.getLogger("torch._dynamo").removeHandler(handler)
        torch._logging.set_logs()
'''


# The part of a repro script that hears torch's graph breaks: the `graph_breaks` log artifact's
# first line names the innermost user line ("Graph break in user code at FILE:LINE", or "Graph
# break (user stack suppressed ...) in user code at FILE:LINE" when repeated), and the reason
# holds the gb_type on a line of its own. A break inside one of torch's polyfills names torch's
# file there: then the innermost frame of the script's own in the "User code traceback" that
# follows (`File "FILE", line N, in f`) is the user's line.
REPRO_BREAK_PROBE = _log_probe(
    "graph_breaks_heard", "A list that fills with (file, line, gb_type lines) for each graph break "
    "torch logs.", "graph_breaks", '''\
            first, _, reason = record.getMessage().partition("\\n")
            filename, _, line = first.rpartition(" in user code at ")[2].rpartition(":")
            if first.startswith("Graph break") and line.isdigit():
                reason = reason.replace("Graph Break Reason: ", "", 1)
                lines = [text.strip() for text in reason.splitlines()]
                ours = [text.partition(", line ")[2].partition(",")[0] for text in lines
                        if text.startswith(f'File "{__file__}", line ')]
                if filename != __file__ and ours:
                    filename, line = __file__, ours[-1]
                heard.append((filename, int(line), lines))
''')

# The part of a recompile's repro script that hears recompiles: the `recompiles` artifact reads
# "Recompiling function f in FILE:LINE\n    triggered by the following guard failure(s): ...".
REPRO_RECOMPILE_PROBE = _log_probe(
    "recompiles_heard", "A list that fills with torch's message for each recompile it logs.",
    "recompiles", '''\
            if record.getMessage().startswith("Recompiling function"):
                heard.append(record.getMessage())
''')
