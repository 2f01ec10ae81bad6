"""`fullgraph report`'s TARGET in a child process, so that whatever kills it still leaves a report.

The parent (run_reported) starts the child through fullgraph.model.launch: it dies with the
parent, gets the parent's SIGINT and SIGTERM, and faulthandler writes its stack on a fatal signal
(SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) and when the parent asks at the timeout. The child runs
TARGET under watch() and keeps the report's data (Report.to_dict()) current in a file, replaced
whole each time: right after every graph break and CUDA-graph skip, before the program can go on
to crash, and every SAMPLE_S seconds if compiles changed it. No process can write anything once
SIGKILL arrives (`kill -9`, the OOM killer), so the child also saves its main thread's stack every
SAMPLE_S seconds, and the last one stands in for it (faulthandler's own timed dumps read other
threads' frames without the GIL, and crash a process that is busy importing). The parent writes
the report from the last data saved and how the child ended, with the child's exit code, or for a
signal 128 plus its number (139 for SIGSEGV, as a shell reports it), and 124 at the timeout (as
timeout(1) does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator

from fullgraph.model.launch import Ended, read_written, run_processes

from ._dumps import main_thread_first
from ._target import Outcome, load_target, run_target
from .env import environment
from .report import RecordedReport, Report, ended_outside
from .repro_record import InputRecorder
from .watch import Watch, watch

__all__ = ["SAMPLE_S", "TIMEOUT_CODE", "run_reported", "main"]

SAMPLE_S = 0.2
TIMEOUT_CODE = 124


def run_reported(argv: list[str], *, command: str, label: str, timeout: float | None,
                 inputs_path: str | None = None) -> tuple[RecordedReport, int]:
    """Run TARGET (`argv`, as `fullgraph report` takes it) in a child; return its report and the
    exit code to pass on. `inputs_path`: where the child keeps the arguments of each function that
    broke (repro.InputRecorder's record, as JSON), for `--repro`."""
    with tempfile.TemporaryDirectory(prefix="fullgraph-report-") as workdir:
        data_path = os.path.join(workdir, "report.json")
        sample_path = os.path.join(workdir, "stack.txt")
        child_command = ["-c", f"from {__name__} import main; main()", data_path, sample_path,
                         inputs_path or "", command, *argv]
        # The timeout counts from TARGET's start, once the child has imported what it needs.
        launched = run_processes([child_command], workdir=workdir, timeout=timeout,
                                 capture=False, timeout_from=data_path)
        saved = _read_json(data_path)
        sample = read_written(sample_path)
    [child] = launched.ended
    data = saved["report"] if saved else Report(Watch(), command=command, target=label).to_dict()
    if child.stopped is not None:
        code = (TIMEOUT_CODE if launched.interrupted is None
                else 128 + launched.interrupted)
        return ended_outside(data, status=child.stopped,
                             crash=_crash(None, child.stack, "when it was stopped")), code
    if child.returncode < 0:
        return _killed(data, child, sample), 128 - child.returncode
    if saved and saved["final"]:
        return RecordedReport(data), child.returncode
    # It left without a word (os._exit): the data is what it had seen until then.
    status = "ok" if child.returncode == 0 else f"exit {child.returncode}"
    return ended_outside(data, status=status, crash=None), child.returncode


def _killed(data: dict, child: Ended, sample: str) -> RecordedReport:
    name = signal.Signals(-child.returncode).name
    if child.stack:
        crash = _crash(name, child.stack, "when it crashed")
    else:  # a signal faulthandler does not handle: SIGKILL, SIGTERM
        crash = _crash(name, sample, f"at the last sample, at most {SAMPLE_S:g} s before {name} "
                                     "ended it (no process can write its stack then)")
    return ended_outside(data, status=f"killed by {name}", crash=crash)


def _crash(signal_name: str | None, stack: str, taken: str) -> dict:
    # The sampled stack is traceback's, one thread: main_thread_first leaves it as it is.
    return {"signal": signal_name, "stack": main_thread_first(stack.strip()),
            "stack_taken": taken}


def _read_json(path: str) -> dict | None:
    text = read_written(path)
    return json.loads(text) if text else None


# -- in the child -----------------------------------------------------------------------------

def main() -> None:
    """The child: `python -c ... DATA STACK INPUTS COMMAND TARGET...`; exits as TARGET did.
    INPUTS is "" unless the arguments of the functions that break are recorded there."""
    data_path, stack_path, inputs_path, command, *argv = sys.argv[1:]
    target = load_target(argv)
    saver = _Saver(data_path, stack_path, command=command, label=target.label)
    with watch(on_change=saver.save) as seen, saver.saving(seen), _recording(inputs_path):
        outcome = run_target(target)
    saver.save_final(outcome)
    sys.exit(outcome.code)


@contextlib.contextmanager
def _recording(path: str) -> Iterator[None]:
    """Keep the recorded arguments in `path`, written after each new one (a crash keeps them)."""
    if not path:
        yield
        return
    recorder = InputRecorder(on_record=lambda: _write(path, json.dumps(recorder.to_dict())))
    with recorder.recording():
        yield


class _Saver:
    """Keeps the report's data in `path`, and the main thread's stack in `stack_path`, current
    while the program runs."""

    def __init__(self, path: str, stack_path: str, *, command: str, label: str) -> None:
        self._path = path
        self._stack_path = stack_path
        self._command = command
        self._label = label
        self._env = environment()
        self._lock = threading.Lock()
        self._seen: Watch | None = None
        self._saved_state: tuple | None = None

    @contextlib.contextmanager
    def saving(self, seen: Watch) -> Iterator[None]:
        """Save now, then whenever compiles change what `seen` holds, until the block ends."""
        self._seen = seen
        self.save()
        stop = threading.Event()
        thread = threading.Thread(target=self._save_on_change, args=(stop,), daemon=True,
                                  name="fullgraph-report-saver")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def save(self, *, if_changed: bool = False) -> None:
        """Save what was seen so far (`if_changed`: unless it is what was saved last); called
        inside dynamo's compile too, so it never raises."""
        if self._seen is None:
            return
        try:
            with self._lock:
                state = self._state()
                if if_changed and state == self._saved_state:
                    return
                report = Report(self._seen, command=self._command, status="running",
                                target=self._label, env=self._env)
                _write(self._path, json.dumps({"final": False, "report": report.to_dict()}))
                self._saved_state = state
        except Exception:  # torch's state read mid-compile (a dict that changed size): next time
            return

    def save_final(self, outcome: Outcome) -> None:
        report = Report(self._seen, command=self._command, status=outcome.status,
                        exception=outcome.exception, target=self._label, env=self._env)
        _write(self._path, json.dumps({"final": True, "report": report.to_dict()}))

    def _save_on_change(self, stop: threading.Event) -> None:
        main = threading.main_thread().ident
        while not stop.wait(SAMPLE_S):
            frame = sys._current_frames().get(main)
            if frame is not None:
                _write(self._stack_path, "Main thread (most recent call last):\n"
                                         + "".join(traceback.format_stack(frame)))
            self.save(if_changed=True)

    def _state(self) -> tuple:
        seen = self._seen
        return (len(seen.compiles), sum(brk.count for brk in seen.graph_breaks),
                seen.cudagraph_skip_count, seen.graph_count)


def _write(path: str, text: str) -> None:
    # Whole or not at all: a process killed mid-write leaves the previous text.
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)
