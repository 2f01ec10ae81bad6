"""run_collective_check's ranks: each in a process of its own, and what is known of each once it
ended.

The launcher (fullgraph.model.launch) starts one `python -c` per rank on `rank_main`, stops them
all at the timeout or a while after one failed, and hands back how each ended. A rank writes its
RankReport to rank{N}.json when its call returns or raises; until then it appends each event of
its check (the function's name, each graph captured, each collective started) to
rank{N}.progress, so that a rank that hangs or crashes is still reported with the graphs it
compiled, the collectives it got through and, from the stack the launcher asked faulthandler for,
the line it was stuck at.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from fullgraph.model.launch import Ended, exit_description, read_written, run_processes

from . import _dumps
from ._frames import innermost_user_frame, raised_at
from ._message import Frame
from .collectives import CapturedGraph, RankReport, check_rank

__all__ = ["run_ranks", "rank_main"]


def run_ranks(target: str, *, world_size: int, dist_backend: str, backend: str, timeout: float
              ) -> list[tuple[str | None, RankReport]]:
    """(the function's name if the rank got as far as naming it, its report) of each rank, in
    rank order; the arguments are run_collective_check's, checked."""
    with tempfile.TemporaryDirectory(prefix="fullgraph-collectives-") as workdir:
        spec = {"target": target, "world_size": world_size, "dist_backend": dist_backend,
                "backend": backend, "timeout": timeout, "sys_path": sys.path,
                "store": os.path.join(workdir, "store"), "workdir": workdir}
        spec_path = os.path.join(workdir, "spec.json")
        with open(spec_path, "w") as out:
            json.dump(spec, out)
        rank_command = ["-c", f"from {__name__} import rank_main; rank_main()", spec_path]
        launched = run_processes([[*rank_command, str(rank)] for rank in range(world_size)],
                                 workdir=workdir, timeout=timeout, label="rank")
        return [_collect(workdir, rank) for rank in launched.ended]


# -- in the launcher, after the ranks ended -----------------------------------------------------

def _collect(workdir: str, rank: Ended) -> tuple[str | None, RankReport]:
    """(function name, report) of one rank: its own report if it wrote one, else what the
    launcher knows: why it was stopped and where it was, or how it exited."""
    written = read_written(os.path.join(workdir, f"rank{rank.index}.json"))
    if written:
        data = json.loads(written)
        return data["function"], RankReport.from_dict(data["report"])
    if rank.stopped is not None:
        where, stack = _stuck_at(rank.stack)
        function, graphs, sequence = _progress(workdir, rank.index)
        status = "timed out" if rank.stopped.startswith("timed out") else "stopped"
        return function, RankReport(rank.index, status, graphs=graphs, sequence=sequence,
                                    error=rank.stopped, where=where, detail=stack)
    return None, RankReport(rank.index, "crashed",
                            error=f"exited with {exit_description(rank.returncode)} without a "
                                  "report", detail=rank.output())


def _progress_path(workdir: str, rank: int) -> str:
    return os.path.join(workdir, f"rank{rank}.progress")


def _progress(workdir: str, rank: int
              ) -> tuple[str | None, tuple[CapturedGraph, ...], tuple[str, ...]]:
    """The function a rank checked, the graphs it captured and the collectives it started, from
    its progress file."""
    events = []
    for line in read_written(_progress_path(workdir, rank)).splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # the last line, cut short by the kill
            break
    function = next((event["function"] for event in events if "function" in event), None)
    return (function,
            tuple(CapturedGraph.from_dict(event["graph"]) for event in events if "graph" in event),
            tuple(event["ran"] for event in events if "ran" in event))


def _stuck_at(dump: str) -> tuple[Frame | None, str]:
    """The innermost user frame of the rank's main thread (the one in rank_main), and that
    thread's stack, from the faulthandler dump the launcher asked for."""
    _, stacks, _ = _dumps.threads(dump)
    main = next((stack for stack in stacks if f"in {rank_main.__name__}" in stack), "")
    return innermost_user_frame(_dumps.frames(main), with_source=True), main.strip()


# -- in a rank's process ------------------------------------------------------------------------

def rank_main() -> None:
    """One rank: `python -c ... SPEC RANK`. Writes rank{RANK}.json and exits 0 if the call
    returned, 1 otherwise."""
    spec_path, rank = sys.argv[1], int(sys.argv[2])
    with open(spec_path) as file:
        spec = json.load(file)
    workdir, world_size = spec["workdir"], spec["world_size"]
    sys.path[:] = spec["sys_path"]
    # The ranks share the machine's cores: more threads than that only contend.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    function = None
    try:
        if spec["dist_backend"] == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(spec["dist_backend"], rank=rank, world_size=world_size,
                                store=dist.FileStore(spec["store"], world_size),
                                timeout=datetime.timedelta(seconds=spec["timeout"]))
        fn, args, kwargs = _unpack(spec["target"], _load(spec["target"])())
        with open(_progress_path(workdir, rank), "w") as progress:
            function, report = check_rank(fn, args, kwargs, backend=spec["backend"],
                                          progress=lambda event: _append(progress, event))
    except Exception as error:  # setup failed: the report says so, the launcher goes on
        report = RankReport(rank, "failed", error=f"{type(error).__name__}: {error}",
                            where=raised_at(error, with_source=True),
                            detail="".join(traceback.format_exception(error)))
    _write_json(os.path.join(workdir, f"rank{rank}.json"),
                {"function": function, "report": report.to_dict()})
    if report.status == "ok":
        # Only on success: after a failure the peers may be blocked in a collective, where
        # tearing the group down would hang. CUDA graphs that captured NCCL collectives (a
        # target compiled with mode="reduce-overhead") must go first, or destroying the group
        # hangs too (pytorch/pytorch#115388); the reset frees them.
        torch.compiler.reset()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # A gloo worker thread can still hold the last collective's tensors at interpreter shutdown,
    # and releasing them then aborts the process (pytorch/pytorch#179291): skip the shutdown.
    os._exit(0 if report.status == "ok" else 1)


def _load(target: str) -> Callable:
    """The function `target` ("module:function", checked by run_collective_check) names."""
    module, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def _unpack(target: str, returned: Any) -> tuple[Callable, tuple, dict]:
    if (not isinstance(returned, tuple) or len(returned) not in (2, 3)
            or not callable(returned[0]) or not isinstance(returned[1], (tuple, list))
            or len(returned) == 3 and not isinstance(returned[2], dict)):
        raise TypeError(f"{target} must return (fn, args) or (fn, args, kwargs), got "
                        f"{type(returned).__name__}")
    fn, args, kwargs = (*returned, {}) if len(returned) == 2 else returned
    return fn, tuple(args), kwargs


def _append(file: Any, event: dict) -> None:
    file.write(json.dumps(event) + "\n")
    file.flush()


def _write_json(path: str, data: dict) -> None:
    # Written whole or not at all: a rank killed mid-write leaves no half report.
    with open(path + ".tmp", "w") as out:
        json.dump(data, out)
    os.replace(path + ".tmp", path)
