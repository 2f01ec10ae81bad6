"""Functions for the repro tests (test_repro.py): what a standalone script can and cannot rebuild.

Each breaking line ends with `# break: <name>`, found by `line_of` as in zoo.py.
"""

import math
import os
from pathlib import Path

SOURCE = Path(__file__).resolve()
OFFSET = 0.5


def line_of(marker: str) -> int:
    return next(number for number, line in enumerate(SOURCE.read_text().splitlines(), start=1)
                if line.rstrip().endswith(f"# break: {marker}"))


def _load_table():
    return {"scale": 3.0}


TABLE = _load_table()  # made by the program: a script cannot rebuild it


def uses_table(x):
    y = x * TABLE["scale"]
    print("scaled")  # break: table
    return y


def pads(x, scale, unused):
    y = x * scale + OFFSET
    y = y + math.pi * 0  # nothing the break needs
    print("padding", y.shape)  # break: pads
    return y


def strided(x, steps):
    y = x.t() * 2
    if y.sum() > 0:  # break: strided
        return y + steps
    return y - steps


class Settings:
    def __init__(self, scale: float):
        self.scale = scale


def takes_settings(x, settings):
    print("settings", settings.scale)  # break: settings
    return x * settings.scale


def doubles(x, times):
    # no break: compiled with dynamic=False, each new size recompiles on a size guard on x
    return x * 2 * times


def resizes(x, label, scale):
    # no break: with dynamic=False a new size of x recompiles; label and scale play no part
    width = len(label)
    y = x * 2
    return y + width * scale


def quits_when_cut(x, code):
    code = 0  # a try that drops this line ends its process: os._exit(code) below
    y = x + 1
    y = y * 2
    y = y - 1
    print("quitting", x.shape)  # break: quits
    if code:
        os._exit(code)
    return x
