"""Known recompiles, one idea per snippet, and code that compiles once.

Every line the tests point at ends with a `# at: <name>` marker (a function's `def` line, or the
line a guard comes from); the tests find its number with `line_of`, so editing this file cannot
silently shift an assertion.
"""

import functools
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).resolve()


def line_of(marker: str) -> int:
    """The line that carries `# at: <marker>`; exactly one must."""
    lines = [number for number, line in enumerate(SOURCE.read_text().splitlines(), start=1)
             if line.rstrip().endswith(f"# at: {marker}")]
    if len(lines) != 1:
        raise LookupError(f"{len(lines)} lines of {SOURCE.name} carry the marker {marker!r}")
    return lines[0]


class StepCounter(nn.Module):
    """Counts its calls on an int attribute: dynamo bakes nn.Module ints in, so every call
    recompiles."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def forward(self, x):  # at: counter-forward
        self.steps += 1  # at: counter-guard
        return x * self.steps


def through_one_wrapper(fn):
    # As a library's decorators do: every function it wraps runs this one code object, whose
    # first line is its decorator's.
    @functools.wraps(fn)  # at: wrapper
    def wrapper(x):
        return fn(x)  # at: wrapper-guard
    return wrapper


@through_one_wrapper
def add_one(x):
    return x + 1


@through_one_wrapper
def double(x):
    return x * 2


@through_one_wrapper
def negate(x):
    return -x


def repeat_add(x, times):  # at: repeat-add
    # A Python int used as a loop bound unrolls into the graph: each value is a new graph.
    for _ in range(times):  # at: repeat-add-guard
        x = x + 1
    return x


def scale(x):  # at: scale
    # Nothing wrong here: the tests make it recompile by changing the input's dtype,
    # requires_grad, shape or the grad mode around the call.
    return x * 2 + 1


def shift(x, offset):  # at: shift
    # A Python int in arithmetic: dynamo makes it dynamic after it changes once.
    return x + offset


class Scaler:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def apply(self, x):  # at: scaler-apply
        return x * self.factor


class MLP(nn.Module):
    """Known good: one graph for any batch size once the batch dimension is dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):  # at: mlp-forward
        return self.down(torch.relu(self.up(x)))


def rows_sum(x):  # at: rows-sum
    return x.sum(dim=1)
