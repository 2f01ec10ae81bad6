"""Kill a tensor-parallel launcher mid-run and watch its ranks, for test_tensor_parallel.py.

    python tests/model/kill_launcher.py SIGNUM

Starts `python -m fullgraph.model.tp_generate --nproc 2 --device cpu` (gloo, eager, 500 tokens
for 8 prompts twice over: over 10 s of work on 2 cores), waits until rank 0 says it is about to
generate, sends SIGNUM to the launcher, and prints one JSON line: the ranks' pids, those alive when
it was sent, the launcher's return code, and the ranks still alive (not zombies) SETTLE_S later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTLE_S = 5.0


def main() -> None:
    signum = int(sys.argv[1])
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fullgraph.model.tp_generate", "--nproc", "2", "--device", "cpu",
         "--no-compile", "--batch-size", "8", "--max-new-tokens", "500"],
        stdout=subprocess.PIPE, text=True)
    for line in launcher.stdout:
        if line.startswith("shard built"):  # both ranks are in the group: generating now
            break
    ranks = _children(launcher.pid)
    alive_at_kill = [pid for pid in ranks if _alive(pid)]
    os.kill(launcher.pid, signum)
    returncode = launcher.wait()
    until = time.monotonic() + SETTLE_S
    while any(map(_alive, ranks)) and time.monotonic() < until:
        time.sleep(0.2)
    print(json.dumps({"ranks": ranks, "alive_at_kill": alive_at_kill,
                      "launcher_returncode": returncode,
                      "alive_after": [pid for pid in ranks if _alive(pid)]}))


def _children(parent: int) -> list[int]:
    return sorted(int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
                  if _field(stat, 1) == str(parent))


def _alive(pid: int) -> bool:
    return _field(Path(f"/proc/{pid}/stat"), 0) not in (None, "Z")


def _field(stat: Path, index: int) -> str | None:
    """Field `index` after the command name of /proc/PID/stat: 0 the state, 1 the parent pid."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[index]
    except (OSError, IndexError):  # the process is gone
        return None


if __name__ == "__main__":
    main()
