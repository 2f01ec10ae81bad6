"""A graph break only when the program is asked for one: `python reads_its_arguments.py loud`.
Its arguments are read through `from sys import argv`."""

from sys import argv

import torch


def step(x):
    y = x * 2
    if "loud" in argv:
        print("loud", tuple(y.shape))  # break: print
    return y + 1


if __name__ == "__main__":
    torch.compile(step, backend="eager")(torch.ones(3))
