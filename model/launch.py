"""Start Python processes that end with the one that started them, and process groups to run in.

A general launcher, used by tensor-parallel generation and `fullgraph bench --nproc` (ranks of one
process group), by the collective checker (ranks with a timeout) and by `fullgraph report` (the
program it reports on, in a child that may crash):

    run_processes(commands, workdir=)   start `python COMMAND` for each command, wait, stop them all
    launch_ranks(module, nproc, argv)   `python -m module` as nproc ranks, in torchrun's environment
    rank_environments(nproc)            that environment, for run_processes
    fake_process_group(world_size)      a single-process stand-in for one rank of any world size
    teardown_process_group()            destroy the default group without hanging under NCCL

Every process run_processes starts
- runs in a session of its own, so stopping it stops whatever it started (inductor's compile
  workers) and the terminal's Ctrl-C reaches it only through the launcher;
- dies with its launcher even when the launcher is killed outright (SIGKILL, the OOM killer): on
  Linux by the parent-death signal it sets itself as it starts, elsewhere by a thread that watches
  the launcher's pid. The signal follows the thread that started the process: start processes
  from a thread that outlives them (the main thread);
- writes its Python stack to its stack file on a fatal signal (faulthandler) and on SIGUSR1;
- imports nothing before its command but the standard library (_launch_child.py): neither this
  package nor torch.

and the launcher
- passes SIGINT and SIGTERM on to every child's session while it waits, and says so;
- stops the others GRACE_S seconds after one fails (a failed rank leaves its peers blocked in a
  collective), and every process still running at the timeout, asking each for its stack first;
- leaves nothing running when it returns or raises. POSIX only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import _torch

__all__ = [
    "GRACE_S",
    "Ended",
    "Launched",
    "read_written",
    "run_processes",
    "exit_description",
    "launch_ranks",
    "rank_environments",
    "fake_process_group",
    "teardown_process_group",
]

# How long the others may run on once one has failed, or once a signal was passed on: long enough
# to end on their own (gloo notices a dead peer at once), short enough not to wait out a timeout.
GRACE_S = 5.0
# How long a process has to write its stack after SIGUSR1 before it is killed.
_DUMP_WAIT_S = 2.0
_POLL_S = 0.05
_FORWARDED = (signal.SIGINT, signal.SIGTERM)
# What each process runs first: a script that imports only the standard library.
_CHILD = str(Path(__file__).with_name("_launch_child.py"))


@dataclass(frozen=True)
class Ended:
    """How one started process ended.

    returncode: as Popen's, negative for the signal that killed it. stopped: why the launcher
    stopped it ("timed out after 60 s", ...), None if it ended by itself. stack: what faulthandler
    wrote (a fatal signal, or the stack the launcher asked for before stopping it), "" if nothing.
    stdout, stderr: what it wrote, when captured; "" where it went to the launcher's own.
    """

    index: int
    pid: int
    returncode: int
    stopped: str | None
    stack: str
    stdout: str = dataclasses.field(default="", repr=False)
    stderr: str = dataclasses.field(default="", repr=False)

    @property
    def failed(self) -> bool:
        return self.returncode != 0 or self.stopped is not None

    def output(self, lines: int = 30) -> str:
        """The last `lines` lines of its stdout, then of its stderr."""
        return "\n".join([*self.stdout.splitlines()[-lines:], *self.stderr.splitlines()[-lines:]])


@dataclass(frozen=True)
class Launched:
    """Every process's ending, in the order of the commands, and the signal (SIGINT or SIGTERM)
    the launcher received and passed on while waiting, if any."""

    ended: tuple[Ended, ...]
    interrupted: int | None = None


def run_processes(commands: Sequence[Sequence[str]], *, workdir: str, timeout: float | None = None,
                  env: Sequence[dict[str, str]] | None = None, capture: bool = True,
                  grace: float = GRACE_S, label: str = "process",
                  timeout_from: str | None = None) -> Launched:
    """Run `python *command` for each command (`["-m", module, *args]`, `["-c", code, *args]` or
    `["script.py", *args]`) at once, wait for all of them, and return how each ended; nothing is
    left running.

    workdir: an existing directory for each process's stack file (proc{i}.stack) and, with
    capture, its output (proc{i}.out, proc{i}.err). env: each process's whole environment
    (default: this one's). timeout: seconds before every process still running is stopped, None
    for no limit.
    label: what a process is called in the reasons given for stopping the others ("rank").
    timeout_from: a path the processes create once their own work begins; the timeout then
    counts from when it exists, not from their start (an interpreter importing torch on a busy
    machine can take longer than the work).
    """
    _check_commands(commands)
    environments = list(env) if env is not None else [dict(os.environ)] * len(commands)
    if len(environments) != len(commands):
        raise ValueError(f"run_processes: env has {len(environments)} entries for "
                         f"{len(commands)} commands")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"run_processes: timeout must be > 0 or None, got {timeout!r}")
    processes: list[subprocess.Popen] = []
    with _passing_on_signals(processes) as received:
        try:
            for index, command in enumerate(commands):
                processes.append(_start(index, command, workdir, environments[index], capture))
            stopped = _wait(processes, workdir, timeout=timeout, grace=grace, received=received,
                            label=label, timeout_from=timeout_from)
        finally:
            for process in processes:
                _kill(process)
    ended = tuple(Ended(index, process.pid, process.returncode, stopped.get(index),
                        read_written(_stack_path(workdir, index)),
                        read_written(_output_path(workdir, index, "out")),
                        read_written(_output_path(workdir, index, "err")))
                  for index, process in enumerate(processes))
    return Launched(ended, received[0] if received else None)


def exit_description(returncode: int) -> str:
    """`code 3`, or `signal SIGSEGV` for a process a signal killed."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
    return f"code {returncode}"


def _check_commands(commands: Sequence[Sequence[str]]) -> None:
    if not commands:
        raise ValueError("run_processes: commands is empty")
    for command in commands:
        if (isinstance(command, str) or not command
                or command[0] in ("-m", "-c") and len(command) < 2):
            raise ValueError("run_processes: each command must be ['-m', module, *args], "
                             f"['-c', code, *args] or ['script.py', *args], got {command!r}")


def _start(index: int, command: Sequence[str], workdir: str, env: dict[str, str],
           capture: bool) -> subprocess.Popen:
    argv = [sys.executable, _CHILD, str(os.getpid()), _stack_path(workdir, index), *command]
    if not capture:
        return subprocess.Popen(argv, env=env, start_new_session=True)
    with open(_output_path(workdir, index, "out"), "w") as out, \
            open(_output_path(workdir, index, "err"), "w") as err:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=err, start_new_session=True)


@contextlib.contextmanager
def _passing_on_signals(processes: list[subprocess.Popen]) -> Iterator[list[int]]:
    """Pass SIGINT and SIGTERM on to every process's session; yields the signals received."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread may handle signals; its own handlers stay
        return

    def pass_on(signum: int, frame: object) -> None:
        received.append(signum)
        print(f"{os.path.basename(sys.argv[0])}: got {signal.Signals(signum).name}, passing it "
              f"on to {len(processes)} process(es)", file=sys.stderr, flush=True)
        for process in processes:
            _signal_session(process, signum)

    previous = {signum: signal.signal(signum, pass_on) for signum in _FORWARDED}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(processes: list[subprocess.Popen], workdir: str, *, timeout: float | None,
          grace: float, received: list[int], label: str, timeout_from: str | None
          ) -> dict[int, str]:
    """Wait for every process; stop the ones still running at the timeout, or `grace` seconds
    after another failed or a signal was passed on. Returns why each stopped one was stopped."""
    deadline = None
    first_failure: tuple[int, float] | None = None
    signalled: tuple[int, float] | None = None
    while True:
        running = [index for index, process in enumerate(processes) if process.poll() is None]
        if not running:
            return {}
        now = time.monotonic()
        if deadline is None and timeout is not None and (
                timeout_from is None or os.path.exists(timeout_from)):
            deadline = now + timeout
        if first_failure is None:
            failed = [index for index, process in enumerate(processes)
                      if process.returncode not in (None, 0)]
            if failed:
                first_failure = (failed[0], now)
        if received and signalled is None:
            signalled = (received[0], now)
        if deadline is not None and now >= deadline:
            why = f"timed out after {timeout:g} s"
        elif signalled is not None and now >= signalled[1] + grace:
            why = (f"still running {grace:g} s after the launcher passed on "
                   f"{signal.Signals(signalled[0]).name}")
        elif first_failure is not None and now >= first_failure[1] + grace:
            why = f"stopped {grace:g} s after {label} {first_failure[0]} failed"
        else:
            time.sleep(_POLL_S)
            continue
        _dump_stacks(processes, running, workdir)
        return {index: why for index in running}


def _dump_stacks(processes: list[subprocess.Popen], indices: list[int], workdir: str) -> None:
    """Ask each of `indices` for its Python stack (faulthandler on SIGUSR1), then kill it."""
    for index in indices:
        with contextlib.suppress(ProcessLookupError):
            os.kill(processes[index].pid, signal.SIGUSR1)
    until = time.monotonic() + _DUMP_WAIT_S
    while (time.monotonic() < until
           and not all(read_written(_stack_path(workdir, index)) for index in indices)):
        time.sleep(_POLL_S)
    time.sleep(0.1)  # let the dumps that started finish
    # All stopped first, then killed: a rank killed while its peer runs closes its sockets, and
    # the peer, waiting in a collective with it, would fail on that and report it before its own
    # kill, in place of the hang it was in.
    for index in indices:
        _signal_session(processes[index], signal.SIGSTOP)
    for index in indices:
        _kill(processes[index])


def _signal_session(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)


def _kill(process: subprocess.Popen) -> None:
    """Kill the process's whole session, whatever it started included, and reap it."""
    _signal_session(process, signal.SIGKILL)
    process.wait()


def _stack_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"proc{index}.stack")


def _output_path(workdir: str, index: int, stream: str) -> str:
    return os.path.join(workdir, f"proc{index}.{stream}")


def read_written(path: str) -> str:
    """The text of a file a process may or may not have written, "" if it never did."""
    try:
        with open(path, errors="replace") as file:
            return file.read()
    except FileNotFoundError:
        return ""


# -- ranks of one process group ---------------------------------------------------------------

def launch_ranks(module: str, nproc: int, argv: Sequence[str], *, timeout: float | None = None
                 ) -> int:
    """Run `python -m module *argv` as `nproc` ranks on this host and wait for them; returns 0 if
    every rank exited with 0, else 1, after one line per failed rank on stderr.

    Each rank gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT on a free local port; OMP_NUM_THREADS=1 unless set, as torchrun
    does), so `dist.init_process_group(backend)` finds its peers, and writes to this process's
    stdout and stderr. A `--nproc N` in argv is left out, so that the ranks do not launch again.
    A signal passed on to the ranks ends this process the same way once they are gone.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"launch_ranks: nproc must be an int >= 1, got {nproc!r}")
    rank_argv = _without_nproc(list(argv))
    environments = rank_environments(nproc)
    with tempfile.TemporaryDirectory(prefix="fullgraph-ranks-") as workdir:
        launched = run_processes([["-m", module, *rank_argv]] * nproc, workdir=workdir,
                                 timeout=timeout, env=environments, capture=False, label="rank")
    for rank in launched.ended:
        if rank.failed:
            why = rank.stopped or f"exited with {exit_description(rank.returncode)}"
            print(f"{module}: rank {rank.index} {why}", file=sys.stderr)
    if launched.interrupted is not None:
        signal.raise_signal(launched.interrupted)
    return 1 if any(rank.failed for rank in launched.ended) else 0


def _without_nproc(argv: list[str]) -> list[str]:
    argv = [arg for arg in argv if not arg.startswith("--nproc=")]
    if "--nproc" in argv:
        at = argv.index("--nproc")
        del argv[at: at + 2]
    return argv


def rank_environments(nproc: int) -> list[dict[str, str]]:
    """This process's environment with torchrun's variables for each of `nproc` local ranks, for
    run_processes(env=...): `dist.init_process_group(backend)` then finds its peers."""
    port = str(_free_port())
    environments = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        if nproc > 1:
            # Ranks that share the cores contend with one thread each already.
            env.setdefault("OMP_NUM_THREADS", "1")
        environments.append(env)
    return environments


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- process groups ---------------------------------------------------------------------------

@contextlib.contextmanager
def fake_process_group(world_size: int, *, rank: int = 0) -> Iterator[dist.ProcessGroup]:
    """A single-process stand-in for rank `rank` of `world_size`, destroyed on exit.

    Collectives return without communicating, so values are wrong but shapes and traced graphs are
    exactly a real rank's: enough to check sharding and tracing for any world size, no spawning.
    """
    if not dist.is_available():
        raise RuntimeError(f"fake_process_group: torch.distributed is not available in torch "
                           f"{torch.__version__}")
    if dist.is_initialized():
        raise RuntimeError("fake_process_group: a process group is already initialised")
    # init_process_group wraps sys.excepthook to prefix "[rankN]:" and destroying the group does
    # not unwrap it; without this, prefixes pile up on every later traceback of the process.
    excepthook = sys.excepthook
    dist.init_process_group("fake", store=_torch.fake_store(), rank=rank, world_size=world_size)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()
        sys.excepthook = excepthook


def teardown_process_group() -> None:
    """Destroy the default process group, first freeing the CUDA graphs that captured its
    collectives.

    With NCCL, destroy_process_group hangs while a CUDA graph holding a captured collective is
    alive (pytorch/pytorch#115388), and a decode step compiled with mode="reduce-overhead" holds
    one. Resetting dynamo frees those graphs, along with every compiled function of the process.
    """
    torch.compiler.reset()
    dist.destroy_process_group()
