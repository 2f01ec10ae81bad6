"""The start of every process fullgraph.model.launch runs, before the command itself.

    python _launch_child.py LAUNCHER_PID STACK_FILE COMMAND...

Run as a script and importing nothing but the standard library, so that a command that does not
use torch does not pay for it (fullgraph.model imports torch): ties this process's life to the
launcher's, arms faulthandler, then runs COMMAND as `python COMMAND...` would.
"""

import ctypes
import faulthandler
import os
import runpy
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def main() -> None:
    launcher, stack_path, *command = sys.argv[1:]
    _die_with(int(launcher))
    # Kept open for the life of the process: faulthandler writes to it from a signal handler.
    stack_file = open(stack_path, "w")
    faulthandler.enable(stack_file, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    if command[0] == "-m":
        sys.argv[:] = command[1:]
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    elif command[0] == "-c":
        sys.argv[:] = ["-c", *command[2:]]
        sys.path[0] = ""  # as `python -c` puts it
        exec(compile(command[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv[:] = command
        sys.path[0] = os.path.dirname(os.path.abspath(command[0]))  # as `python script.py`
        runpy.run_path(command[0], run_name="__main__")


def _die_with(launcher: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_launcher, args=(launcher,), daemon=True).start()
    # The launcher may have died before the signal was armed: its orphan has a new parent.
    if os.getppid() != launcher:
        os._exit(1)


def _watch_launcher(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(0.5)
    os._exit(1)


if __name__ == "__main__":
    main()
