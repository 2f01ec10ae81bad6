import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch

from fullgraph.model import LlamaConfig, init_params
from fullgraph.model.launch import Ended, run_processes

# Every process the suite starts inherits this variable, its value naming this pytest process:
# whatever still carries it when the session ends was left running by a test.
SESSION_MARK = "FULLGRAPH_TEST_SESSION"
LEFTOVER_WAIT_S = 5.0
# Inductor's compile-worker pool carries the mark of the process that compiled, but it is torch's:
# it watches that process (--parent) and ends with it. It starts where there are cores to spare.
INDUCTOR_COMPILE_WORKER = "torch/_inductor/compile_worker/"


@pytest.fixture(autouse=True)
def _isolated_dynamo():
    # Each test compiles from scratch and leaves nothing compiled behind for the next one.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def highest_precision():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.fixture(scope="session")
def tiny_cfg() -> LlamaConfig:
    return LlamaConfig.from_name("tiny")


@pytest.fixture
def tiny_params(tiny_cfg):
    return init_params(tiny_cfg, seed=0)


@pytest.fixture
def run_python(tmp_path):
    """Run `python *command` for each command through fullgraph.model.launch: each in a session
    of its own, dying with pytest, nothing left running afterwards. Returns each one's Ended
    (stdout and stderr captured); one still running at `timeout` fails the test, named with its
    last output and its stack. `timeout_from`: a path the processes create once their own work
    begins, from when the timeout counts (run_processes's)."""

    def run(*commands: list[str], timeout: float, env: list[dict] | None = None,
            label: str = "process", timeout_from: str | None = None) -> tuple[Ended, ...]:
        workdir = tempfile.mkdtemp(dir=tmp_path)
        launched = run_processes(commands, workdir=workdir, timeout=timeout, env=env, label=label,
                                 timeout_from=timeout_from)
        if launched.interrupted is not None:  # Ctrl-C: stop the session as it would have
            signal.raise_signal(launched.interrupted)
        hung = [ended for ended in launched.ended
                if ended.stopped and ended.stopped.startswith("timed out")]
        if hung:
            pytest.fail("\n\n".join(f"{label} {ended.index} {ended.stopped}; its last output:\n"
                                     f"{ended.output()}\nits stack:\n{ended.stack}"
                                     for ended in hung), pytrace=False)
        return launched.ended

    return run


@pytest.fixture
def run_pytest(pytester, run_python):
    """`pytester.runpytest_subprocess`, started through run_python: a pytest run in pytester's
    directory that ends with everything it started and fails its test, named, if it hangs."""

    def run(*args: str, timeout: float = 300) -> pytest.RunResult:
        path = os.pathsep.join(filter(None, [str(pytester.path), os.environ.get("PYTHONPATH")]))
        basetemp = tempfile.mkdtemp(dir=pytester.path, prefix="basetemp-")
        started = time.monotonic()
        (ended,) = run_python(["-m", "pytest", f"--basetemp={basetemp}", *args], timeout=timeout,
                              env=[dict(os.environ, PYTHONPATH=path)], label="pytest")
        return pytest.RunResult(ended.returncode, ended.stdout.splitlines(),
                                ended.stderr.splitlines(), time.monotonic() - started)

    return run


@pytest.fixture
def leftover_processes():
    """A function returning pid -> command line of each process the tests started that is
    still running, after a few seconds' grace for those on their way out."""
    return lambda: _still_running(os.environ[SESSION_MARK])


def pytest_configure(config):
    os.environ[SESSION_MARK] = f"{os.getpid()}-{uuid.uuid4().hex}"


def pytest_sessionfinish(session, exitstatus):
    leftovers = _still_running(os.environ[SESSION_MARK])
    if not leftovers:
        return
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # ended meanwhile
    lines = "\n".join(f"  pid {pid}: {command}" for pid, command in leftovers.items())
    message = (f"{len(leftovers)} process(es) started by the tests were still running at the end "
               f"of the session (now killed):\n{lines}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _still_running(mark: str) -> dict[int, str]:
    """pid -> command line of every live process (zombies are not) carrying `mark`, after
    LEFTOVER_WAIT_S for those on their way out."""
    until = time.monotonic() + LEFTOVER_WAIT_S
    while True:
        found = {pid: command for pid, command in _marked(mark) if pid != os.getpid()}
        if not found or time.monotonic() > until:
            return found
        time.sleep(0.2)


def _marked(mark: str):
    needle = f"{SESSION_MARK}={mark}".encode() + b"\0"
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if (needle in environ and state != "Z" and not _xdist_worker_of_this(environ)
                and INDUCTOR_COMPILE_WORKER not in command):
            yield int(proc.name), command.strip()


def _xdist_worker_of_this(environ: bytes) -> bool:
    # An xdist worker carries its controller's mark (its children carry the worker's own): the
    # controller does not count its workers.
    return "PYTEST_XDIST_WORKER" not in os.environ and b"PYTEST_XDIST_WORKER=" in environ


def pytest_collection_modifyitems(config, items):
    # The slow tests first, in their order, the rest after in theirs: under xdist a long test
    # started last keeps one worker busy while the other has nothing left to run.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
