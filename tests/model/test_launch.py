"""fullgraph.model.launch: processes that end with their launcher, stopped at a timeout or after
another failed, with their stacks. Killing the launcher itself mid-run is tested with real ranks in
test_tensor_parallel.py."""

from __future__ import annotations

import os

import pytest

from fullgraph.model.launch import exit_description, run_processes


def _sleeps_after(flag: str, line: str = "") -> list[str]:
    # Creates `flag` once started (the timeout counts from then), then sleeps at line 3.
    return ["-c", f"import time\nopen({flag!r}, 'w').close()\ntime.sleep(600)\n{line}"]


def test_a_process_still_running_at_the_timeout_is_stopped_with_its_stack(tmp_path):
    flag = str(tmp_path / "started")
    [ended] = run_processes([_sleeps_after(flag)], workdir=str(tmp_path), timeout=1,
                            timeout_from=flag).ended
    assert ended.stopped == "timed out after 1 s" and ended.failed
    assert 'File "<string>", line 3 in <module>' in ended.stack  # asked for before the kill
    assert exit_description(ended.returncode) == "signal SIGKILL"


def test_the_others_are_stopped_a_grace_period_after_one_fails(tmp_path):
    flag = str(tmp_path / "started")
    fails = ["-c", "import sys; print('giving up', file=sys.stderr); sys.exit(3)"]
    waits, failed = run_processes([_sleeps_after(flag), fails], workdir=str(tmp_path), grace=1,
                                  label="rank").ended
    assert (failed.returncode, failed.stopped, failed.stderr) == (3, None, "giving up\n")
    assert waits.stopped == "stopped 1 s after rank 1 failed" and waits.returncode < 0


def test_each_command_runs_as_python_would_run_it_without_torch_imported_first(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import sys; print(sys.argv, sys.path[0], 'torch' in sys.modules)")
    runs = run_processes([["-c", "import sys; print(sys.argv, repr(sys.path[0]))", "a"],
                          ["-m", "json.tool", "--help"], [str(script), "b"]],
                         workdir=str(tmp_path)).ended
    assert [run.returncode for run in runs] == [0, 0, 0], [run.stderr for run in runs]
    assert runs[0].stdout == "['-c', 'a'] ''\n"
    assert runs[1].stdout.startswith("usage: python -m json.tool")
    assert runs[2].stdout == f"[{str(script)!r}, 'b'] {tmp_path} False\n"


@pytest.mark.parametrize("commands, options, error", [
    ([], {}, "run_processes: commands is empty"),
    (["-c", "pass"], {}, "each command must be ['-m', module, *args], ['-c', code, *args] or"),
    ([["-m"]], {}, "each command must be"),
    ([["-c", "pass"]], {"env": []}, "run_processes: env has 0 entries for 1 commands"),
    ([["-c", "pass"]], {"timeout": 0}, "run_processes: timeout must be > 0 or None, got 0"),
])
def test_misuse_is_refused_before_anything_starts(commands, options, error, tmp_path):
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("*", r"\*")):
        run_processes(commands, workdir=str(tmp_path), **options)
    assert list(tmp_path.iterdir()) == []


def test_processes_stopped_at_the_timeout_see_nothing_of_each_others_kill(tmp_path):
    # The second waits on a lock the first holds, as a rank waits in a collective on its peer.
    # Killed one after the other, the second would get the lock as the first died and act on it
    # before its own kill: a rank would report its peer's kill instead of the hang.
    lock, started, acted = (str(tmp_path / name) for name in ("lock", "started", "acted"))
    holds = ["-c", f"import fcntl, time\nheld = open({lock!r}, 'w')\n"
                   f"fcntl.flock(held, fcntl.LOCK_EX)\nopen({started!r}, 'w').close()\n"
                   "time.sleep(600)"]
    waits = ["-c", f"import fcntl, os, time\nwhile not os.path.exists({started!r}):\n"
                   f"    time.sleep(0.01)\nfcntl.flock(open({lock!r}, 'w'), fcntl.LOCK_EX)\n"
                   f"open({acted!r}, 'w').close()\ntime.sleep(600)"]
    ended = run_processes([holds, waits], workdir=str(tmp_path), timeout=1,
                          timeout_from=started).ended
    assert [process.stopped for process in ended] == ["timed out after 1 s"] * 2
    assert not os.path.exists(acted)
