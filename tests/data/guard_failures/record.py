"""Record what this torch prints for each kind of guard failure, into torch-<version>.json.

tests/checks/test_guard_failures.py parses every recorded file, so a CI run on one torch still
checks every supported torch's wording. The script imports torch alone (never fullgraph): it
records what torch prints, not what the parser expects.

To add a torch version (every release rewords some guards):

    python -m venv /tmp/t && /tmp/t/bin/pip install torch==X.Y.Z
    /tmp/t/bin/python tests/data/guard_failures/record.py    # writes torch-X.Y.Z.json beside it

then run tests/checks/test_guard_failures.py: a new wording either parses to the same guard or
fails there, naming the case and the version. A case this torch does not recompile on is recorded
with "message": null, and the test says so.

Each case compiles a small function with the eager backend and calls it so that the last call
fails a guard of the graphs before it; the file keeps the `recompiles` log message torch wrote for
that recompile (every cache entry's failure, newest first), exactly as torch wrote it.
"""

import contextlib
import json
import logging
from pathlib import Path

import torch

COUNT = 0


@contextlib.contextmanager
def _recompile_messages():
    """The `recompiles` log messages written inside the block, each one recompile."""
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()


def _compiled(fn, **options):
    return torch.compile(fn, backend="eager", **options)


# -- what the cases compile ----------------------------------------------------------------------

def scale(x):
    return x * 2


def add(x, y):
    return x + y


def times(x, n):
    return x * n


def pick(x, mode):
    return x * 2 if mode == "double" else x


def rows_sum(x):
    return x.sum(1)


def plus_global(x):
    return x + COUNT


def plus_length(x, items):
    return x + len(items)


def apply(x, act):
    return act(x)


def plus_values(x, table):
    return x + sum(table.values())


def if_key(x, table):
    return x + 1 if "a" in table else x - 1


def maybe_add(x, y):
    return x * 2 if y is None else x + y


def plus_attribute(x, obj):
    return x + obj.value


class Red:
    value = 1


class Blue:
    value = 1


class StepCounter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def forward(self, x):
        self.steps += 1
        return x * self.steps


class Dropout(torch.nn.Module):
    def forward(self, x):
        return x * 2 if self.training else x


# -- the cases: the last call of each recompiles ---------------------------------------------------

def _twice(fn, first, second, **options):
    compiled = _compiled(fn, **options)
    compiled(*first)
    compiled(*second)


def case_size():
    _twice(scale, (torch.ones(2),), (torch.ones(3),), dynamic=False)


def case_stride():
    _twice(scale, (torch.ones(3, 2),), (torch.ones(2, 3).t(),), dynamic=False)


def case_rank():
    _twice(scale, (torch.ones(2),), (torch.ones(2, 2),), dynamic=False)


def case_dtype():
    _twice(scale, (torch.ones(2),), (torch.ones(2, dtype=torch.float64),))


def case_requires_grad():
    _twice(scale, (torch.ones(2),), (torch.ones(2, requires_grad=True),))


def case_device():
    _twice(scale, (torch.ones(2),), (torch.ones(2, device="meta"),))


def case_size_range_one_bound():
    compiled = _compiled(rows_sum)
    for rows in (2, 3, 1):  # static, then dynamic with rows >= 2, then the 0/1 specialisation
        compiled(torch.ones(rows, 4))


def case_size_range_two_bounds():
    x = torch.ones(3, 4)
    torch._dynamo.mark_dynamic(x, 0, min=2, max=11)
    _twice(rows_sum, (x,), (torch.ones(12, 4),))


def case_size_equality():
    compiled = _compiled(add)
    for first, second in ((2, 2), (3, 3), (4, 1)):  # duck sizing: one size for both, then not
        compiled(torch.ones(first, 2), torch.ones(second, 2))


def case_value_int():
    _twice(times, (torch.ones(2), 1), (torch.ones(2), 2))


def case_value_bool():
    _twice(times, (torch.ones(2), True), (torch.ones(2), False))


def case_value_string():
    _twice(pick, (torch.ones(2), "double"), (torch.ones(2), "same"))


def case_value_global():
    global COUNT
    compiled = _compiled(plus_global)
    for count in (0, 1):
        COUNT = count
        compiled(torch.ones(2))


def case_value_module_attribute():
    compiled = _compiled(StepCounter())
    compiled(torch.ones(2))
    compiled(torch.ones(2))


def case_value_training_flag():
    module = Dropout()
    compiled = _compiled(module)
    compiled(torch.ones(2))
    module.eval()
    compiled(torch.ones(2))


def case_id():
    _twice(apply, (torch.ones(2), torch.sin), (torch.ones(2), torch.cos))


def case_none():
    _twice(maybe_add, (torch.ones(2), None), (torch.ones(2), torch.ones(2)))


def case_type():
    _twice(plus_attribute, (torch.ones(2), Red()), (torch.ones(2), Blue()))


def case_length():
    _twice(plus_length, (torch.ones(2), [1, 2]), (torch.ones(2), [1, 2, 3]))


def case_dict_keys():
    _twice(plus_values, (torch.ones(2), {"a": 1}), (torch.ones(2), {"b": 1}))


def case_dict_contains():
    _twice(if_key, (torch.ones(2), {"a": 1}), (torch.ones(2), {"b": 1}))


def case_grad_mode():
    compiled = _compiled(scale)
    compiled(torch.ones(2))
    with torch.no_grad():
        compiled(torch.ones(2))


def case_autocast():
    compiled = _compiled(scale)
    compiled(torch.ones(2))
    with torch.autocast("cpu"):
        compiled(torch.ones(2))


def case_deterministic_algorithms():
    compiled = _compiled(scale)
    compiled(torch.ones(2))
    torch.use_deterministic_algorithms(True)
    try:
        compiled(torch.ones(2))
    finally:
        torch.use_deterministic_algorithms(False)


def case_default_dtype():
    compiled = _compiled(lambda x: x + torch.ones(2))
    compiled(torch.ones(2))
    torch.set_default_dtype(torch.float64)
    try:
        compiled(torch.ones(2))
    finally:
        torch.set_default_dtype(torch.float32)


class PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def case_torch_function_mode():
    compiled = _compiled(scale)
    compiled(torch.ones(2))
    with PassThrough():
        compiled(torch.ones(2))


def case_duplicate_inputs():
    x = torch.ones(2)
    _twice(add, (torch.ones(2), torch.ones(2)), (x, x))


def case_backend():
    x = torch.ones(2)
    torch.compile(scale, backend="eager")(x)
    torch.compile(scale, backend="aot_eager")(x)


CASES = {name[len("case_"):]: case for name, case in globals().items()
         if name.startswith("case_")}


def record() -> dict:
    """{case: {"message": torch's text, or None with a "why"}} for every case."""
    recorded = {}
    for name, case in CASES.items():
        torch._dynamo.reset()
        with _recompile_messages() as messages:
            case()
        torch._dynamo.reset()
        recorded[name] = ({"message": messages[-1]} if messages
                          else {"message": None, "why": "this torch did not recompile"})
    return recorded


def main() -> None:
    version = torch.__version__.split("+")[0]
    path = Path(__file__).with_name(f"torch-{version}.json")
    data = {"torch": version, "cases": record()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {len(data['cases'])} cases to {path}")


if __name__ == "__main__":
    main()
