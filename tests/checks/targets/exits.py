"""Breaks the graph, then exits with status 3."""

import sys

import torch


def shout(x):
    print("exiting")  # break: print
    return x + 1


torch.compile(shout, backend="eager")(torch.ones(2))
sys.exit(3)
