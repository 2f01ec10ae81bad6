"""The suite's session check (tests/conftest.py): a process a test leaves running fails the run."""

from pathlib import Path

import pytest

pytest_plugins = "pytester"

CONFTEST = Path(__file__).with_name("conftest.py")
# A test that starts a process and, unless told to wait for it, leaves it running.
STARTS_A_SLEEPER = '''
import os
import subprocess
import sys


def test_starts_a_sleeper():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open("sleeper.pid", "w") as out:
        out.write(str(sleeper.pid))
    if os.environ.get("WAIT_FOR_SLEEPER"):
        sleeper.kill()
        sleeper.wait()
'''


@pytest.mark.slow
@pytest.mark.parametrize("waits", [False, True], ids=["left-running", "waited-for"])
def test_a_process_left_running_fails_the_session_loudly_and_is_killed(waits, pytester,
                                                                       run_pytest, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_sleeper=STARTS_A_SLEEPER)
    if waits:
        monkeypatch.setenv("WAIT_FOR_SLEEPER", "1")
    result = run_pytest("-p", "no:cacheprovider", "-p", "no:xdist", timeout=120)
    result.assert_outcomes(passed=1)
    pid = int((pytester.path / "sleeper.pid").read_text())
    headline = ("1 process(es) started by the tests were still running at the end of the "
                "session (now killed):")
    if waits:
        assert result.ret == pytest.ExitCode.OK
        assert headline not in result.stdout.str()
    else:
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines([headline, f"  pid {pid}: * -c import time; time.sleep(120)"])
    assert not Path(f"/proc/{pid}").exists() or _state(pid) == "Z"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
