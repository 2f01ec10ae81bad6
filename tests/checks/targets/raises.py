"""Breaks the graph, then fails: the report must still be written."""

import torch


def check(x):
    total = x.sum().item()  # break: item
    if total > 0:
        raise ValueError(f"boom: total {total}")
    return x


torch.compile(check, backend="eager")(torch.ones(3))
