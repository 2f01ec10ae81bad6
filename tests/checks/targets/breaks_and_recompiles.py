"""A graph break (a print) and a recompile per size: `python breaks_and_recompiles.py 2 3`."""

import sys

import torch


def scale(x):
    y = x * 2
    print("scaling", tuple(y.shape))  # break: print
    return y + 1


def main(sizes):
    # dynamic=False: every new size fails a size guard and compiles again.
    step = torch.compile(scale, backend="eager", dynamic=False)
    for size in sizes:
        step(torch.ones(size))
    print("argv", sys.argv[1:])


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [2, 3])
