"""A toy decode step with two graph breaks and a recompile per length: docs/report-example.md.

    fullgraph report --repro repros -o report.md -- tests/checks/targets/decode_loop.py
"""

import sys

import torch


def rotate(x, pos):
    angle = pos.item() * 0.01  # a Python float read from a tensor
    return x * torch.cos(torch.tensor(angle))


def log_step(x):
    print("decode step", tuple(x.shape))  # debugging output left behind
    return x


def decode(x, pos):
    x = rotate(x, pos)
    return log_step(x).softmax(-1)


def main(lengths):
    # dynamic=False, as a CUDA-graph decode loop compiles: every new length compiles again.
    step = torch.compile(decode, backend="eager", dynamic=False)
    for length in lengths:
        step(torch.randn(1, length), torch.tensor(length))


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [4, 5, 6])
