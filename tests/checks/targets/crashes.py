"""Breaks the graph, then dies the way argv[1] says: segfault, abort, kill (SIGKILL) or hang."""

import ctypes
import os
import signal
import sys
import time

import torch


def shout(x):
    print("about to", sys.argv[1], flush=True)  # break: print
    return x + 1


def hang():
    while True:
        time.sleep(0.1)  # hangs here


def kill():
    # SIGKILL leaves no time to write a stack: let a sample land here first.
    time.sleep(1)  # sampled here
    os.kill(os.getpid(), signal.SIGKILL)


DEATHS = {
    "segfault": lambda: ctypes.string_at(0),  # crashes here
    "abort": os.abort,
    "kill": kill,
    "hang": hang,
}

torch.compile(shout, backend="eager")(torch.ones(2))
DEATHS[sys.argv[1]]()
