"""One long-lived Python process that runs repro scripts: delta debugging's tries, in milliseconds.

    with ReproWorker() as worker:
        status, why = worker.run("repros/break_1_x.py", timeout=120)

A fresh interpreter per try spends seconds importing torch, and a reduction tries dozens of
scripts. The worker imports torch once, then runs each script it is sent as `__main__` in a
namespace of its own, on a fresh dynamo (`torch.compiler.reset()` before and after) and with the
global state dynamo guards on put back after it (repro_record.global_state_kept), with what it
prints captured, and answers as `repro.verify` does. What a script leaves behind besides those (a
thread it started, a module it patched) could still reach the next one, so the worker's verdicts
only steer the reduction: every verdict a report gives comes from a fresh
interpreter (`repro.verify`).

A script that runs past its timeout gets the worker killed; one that ends the worker (a segfault,
`os._exit`) ends it. Either way the try does not reproduce, says why, and the next script starts a
new worker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import linecache
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from fullgraph.model.launch import exit_description

from .repro import NOT_ON_ITS_OWN, TAIL_LINES, Confirm, verdict
from .repro_record import global_state_kept

__all__ = ["STARTUP_S", "ReproWorker"]

STARTUP_S = 300.0  # importing torch, on a loaded machine
_READY = "ready"


class ReproWorker:
    """A worker process, started when this is made and again after a script that hung or ended
    it. `lost`: the scripts that did."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="fullgraph-worker-")
        self._log_path = os.path.join(self._folder.name, "worker.log")
        self._process: subprocess.Popen | None = None
        self._ready = False
        self.lost = 0
        self._start()

    def __enter__(self) -> ReproWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop()
        self._folder.cleanup()

    def run(self, path: str | os.PathLike, *, timeout: float, confirm: Confirm | None = None
            ) -> tuple[str, str | None]:
        """Run the script at `path` in the worker: (REPRODUCES, None), or (NOT_ON_ITS_OWN, why:
        how it ended and the last lines it wrote, or what `confirm` found), as `repro.verify`."""
        if self._process is None:
            self._start()
        if not self._ready:
            started, why = self._wait_ready()
            if not started:
                return NOT_ON_ITS_OWN, why
        try:
            self._process.stdin.write(json.dumps({"path": os.path.abspath(path)}) + "\n")
            self._process.stdin.flush()
            reply = self._read_line(timeout)
        except BrokenPipeError:  # it ended between two scripts
            reply = ""
        if reply is None:
            self.lost += 1
            self._stop()
            return NOT_ON_ITS_OWN, f"timed out after {timeout:g} s (the worker was killed)"
        if not reply:
            self.lost += 1
            return NOT_ON_ITS_OWN, self._ended()
        answer = json.loads(reply)
        tail = "\n".join(answer["printed"].splitlines()[-TAIL_LINES:])
        return verdict(answer["printed"], answer["how"], tail, confirm)

    def _start(self) -> None:
        with open(self._log_path, "w") as log:  # the child keeps its own descriptor
            self._process = subprocess.Popen(
                [sys.executable, "-m", "fullgraph.checks._repro_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, cwd=self._folder.name, text=True,
                start_new_session=True)
        self._ready, self._buffer = False, b""

    def _wait_ready(self) -> tuple[bool, str | None]:
        reply = self._read_line(STARTUP_S)
        if reply is None:
            self._stop()
            return False, f"the worker did not start within {STARTUP_S:g} s"
        if not reply:
            return False, self._ended()
        self._ready = json.loads(reply) == _READY
        return self._ready, None if self._ready else f"the worker said {reply!r} before starting"

    def _read_line(self, timeout: float) -> str | None:
        """The worker's next line, "" if it ended first, None if `timeout` seconds pass first."""
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _ended(self) -> str:
        """Why the worker ended, with the last lines it wrote; the next run starts another."""
        returncode = self._stop()
        with open(self._log_path, encoding="utf-8", errors="replace") as log:
            tail = "\n".join(log.read().splitlines()[-TAIL_LINES:])
        return f"the worker ended ({exit_description(returncode)}): {tail}".strip()

    def _stop(self) -> int | None:
        """Kill the worker and what its script started, if it runs; its return code."""
        if self._process is None:
            return None
        with contextlib.suppress(ProcessLookupError):  # before wait: the group is still its own
            os.killpg(self._process.pid, signal.SIGKILL)
        returncode = self._process.wait()
        with contextlib.suppress(BrokenPipeError):  # a request it never read
            self._process.stdin.close()
        self._process.stdout.close()
        self._process = None
        return returncode


# -- in the worker ------------------------------------------------------------------------------

def _serve() -> None:
    # Replies go out on a copy of stdout; what a script writes to descriptor 1 itself (a C
    # library's printf) goes to the log with stderr instead of into a reply.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    faulthandler.enable()  # a segfault's stack, for the tail the parent reports
    torch.compiler.reset()  # imports dynamo (seconds): part of starting, not of the first try
    print(json.dumps(_READY), file=replies)
    for request in sys.stdin:
        print(json.dumps(_run(json.loads(request)["path"])), file=replies)


def _run(path: str) -> dict:
    """How the script at `path`, run here on a fresh dynamo and with the global state put back
    after it, ended ("how": None for exit 0) and
    what it printed, its stdout and stderr together: what `repro.verdict` needs."""
    out = io.StringIO()
    how = None
    torch.compiler.reset()
    linecache.clearcache()  # reduction rewrites the same file: tracebacks must show this text
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), global_state_kept():
            runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        how = None if stop.code in (0, None) else f"exit {stop.code}"
    except Exception as error:  # the script's own failure: the break moved, a name it needs is gone
        out.write(_traceback(error, path))
        how = "exit 1"
    finally:
        torch.compiler.reset()
    return {"how": how, "printed": out.getvalue()}


def _traceback(error: Exception, path: str) -> str:
    """The traceback as a fresh interpreter prints it: from the script's frames, not the worker's."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))


if __name__ == "__main__":
    _serve()
