"""A module with a function to call (`targets.report_module:main`) and a __main__ (`-m`)."""

import sys

import torch


def _describe(x):
    print("describing", x.shape)  # break: print
    return x


def forward(x):
    return _describe(x * 2) + 1


def main():
    torch.compile(forward, backend="eager")(torch.ones(4))


if __name__ == "__main__":
    print("argv", sys.argv[1:])
    main()
