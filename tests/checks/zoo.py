"""Known graph breaks, one idea per function, and a few functions that compile cleanly.

Every line that breaks the graph ends with a `# break: <name>` marker; the tests find its line
number by that marker (`line_of`), so editing this file cannot silently shift an assertion.
"""

import ctypes
import functools
import zlib
from pathlib import Path

import torch
from torch import nn

SOURCE = Path(__file__).resolve()


def line_of(marker: str) -> int:
    """The line that carries `# break: <marker>`; exactly one must."""
    lines = [number for number, line in enumerate(SOURCE.read_text().splitlines(), start=1)
             if line.rstrip().endswith(f"# break: {marker}")]
    if len(lines) != 1:
        raise LookupError(f"{len(lines)} lines of {SOURCE.name} carry the marker {marker!r}")
    return lines[0]


def prints(x):
    y = x * 2
    print("tracing", y.shape)  # break: print
    return y + 1


def reads_item(x):
    y = x * 2
    scale = y.sum().item()  # break: item
    return y * scale


def branches_on_data(x):
    y = x * 2
    if y.sum() > 0:  # break: if
        return y + 1
    return y - 1


def calls_unsupported_builtin(x):
    y = x * 2
    names = dir(y)  # break: builtin
    return y + len(names)


def calls_c_function(x):
    y = x * 2
    checksum = zlib.crc32(b"fullgraph")  # break: c function
    return y + checksum


def calls_ctypes(x):
    # dynamo steps into its own polyfills for this call; the break must still point here.
    y = x * 2
    value = ctypes.c_int(3).value  # break: ctypes
    return y + value


def breaks_first(x):
    print("first statement")  # break: first
    return x + 1


def _log(x):
    print("log", x.shape)  # break: helper
    return x + 1


def _scale_and_log(x):
    return _log(x * 2)  # break: middle call


def calls_helpers(x):
    y = x + 1
    return _scale_and_log(y) * 3  # break: outer call


def calls_helper_twice(x):
    y = _log(x)  # break: first call
    return _log(y)  # break: second call


def calls_helper_in_loop(x):
    for _ in range(2):
        x = _log(x)  # break: loop call
    return x


@torch.compiler.disable
def _kept_eager(x):
    return x.sin()


def calls_disabled(x):
    y = x * 2
    return _kept_eager(y) + 1  # break: disabled


def breaks_three_times(x):
    y = x * 2
    print("one")  # break: three 1
    scale = y.sum().item()  # break: three 2
    if y.sum() > 0:  # break: three 3
        return y * scale
    return y


def raises_after_break(x):
    print("about to fail")  # break: before raise
    raise ValueError("boom")


class PrintingBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        y = self.proj(x)
        print("block")  # break: module
        return torch.relu(y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = PrintingBlock()

    def forward(self, x):
        return self.block(x * 2) + 1  # break: module call


class Scaler:
    def __init__(self, factor: float):
        self.factor = factor

    def scale(self, x):
        y = x * self.factor
        print("scaling")  # break: method
        return y + 1


def _through_one_wrapper(fn):
    # Every function it wraps runs the same code object: dynamo's cache for it holds them all.
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args)
    return wrapper


@_through_one_wrapper
def wrapped_prints(x):
    y = x * 2
    print("tracing", y.shape)  # break: wrapped print
    return y + 1


@_through_one_wrapper
def wrapped_adds(x):
    return x + 1


def clean(x):
    # Three ops of three kinds of node: a method, a function and an operator.
    return torch.relu(x.sin()) * 2


class CleanNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.proj(x))
