"""Every guard-failure form torch prints, in every supported torch's wording, parsed.

tests/data/guard_failures/torch-<version>.json holds what each torch printed for each case
(recorded by record.py beside it, under that torch); this file says what each case must parse
to, whatever torch runs the tests.
"""

import json
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch

from fullgraph.checks.recompiles import failures_from_log, parse_guard_failure


class Containing(str):
    """Equal to any str that contains it: a value whose other parts (an id) vary from run to run."""

    def __eq__(self, other):
        return isinstance(other, str) and self in other

    __hash__ = str.__hash__


RECORDINGS = sorted((Path(__file__).parents[1] / "data" / "guard_failures").glob("torch-*.json"))
SPECIALISED = "sizes 0 and 1 are always specialised"

# case: (kind, source, expected, actual, torch's note starts with) of the newest entry's failure.
EXPECTED = {
    "size": ("size", "x.size()[0]", "2", "3", ""),
    "stride": ("stride", "x.stride()[0]", "2", "1", ""),
    "rank": ("ndim", "x.dim()", "1", "2", ""),
    "dtype": ("dtype", "x.dtype", "Float", "Double", ""),
    "requires_grad": ("requires_grad", "x.requires_grad", "False", "True", ""),
    "device": ("device", "x.device", "CPU", "Meta", ""),
    "size_range_one_bound": ("size", "x.size()[0]", ">= 2", None, SPECIALISED),
    "size_range_two_bounds": ("size", "x.size()[0]", ">= 2 and <= 11", None, SPECIALISED),
    "size_equality": ("size", "y.size()[0]", "x.size()[0]", None, ""),
    "value_int": ("value", "n", "1", None, ""),
    "value_bool": ("value", "n", "True", None, ""),
    "value_string": ("value", "mode", "'double'", None, ""),
    "value_global": ("value", "G['COUNT']", "0", None, ""),
    "value_module_attribute": ("value", "self.steps", "0", None,
                               "torch.compile considers integer attributes"),
    "value_training_flag": ("value", "self.training", "True", None, ""),
    "none": ("value", "y", "None", None, ""),
    "id": ("id", "act", ANY, None, ""),
    "type": ("type", "obj", "<class '__main__.Red'>", None, "type Red"),
    "length": ("length", "items", "2", None, ""),
    "dict_keys": ("dict_keys", "table.keys()[0]", "'a'", None, ""),
    "dict_contains": ("dict_keys", "table", "key 'a'", None, ""),
    "grad_mode": ("grad_mode", "grad_mode", None, None, ""),
    "autocast": ("global_state", "autocast(cpu)_enabled", None, None, ""),
    "deterministic_algorithms": ("global_state", "deterministic_algorithms", None, None, ""),
    "default_dtype": ("global_state", "default_dtype", None, None, ""),
    "torch_function_mode": ("global_state", "torch_function_mode_stack", None, None, ""),
    "duplicate_inputs": ("aliasing", "x, y", "distinct tensors", "the same tensor", ""),
    "backend": ("backend", "backend", Containing("compiler='eager'"),
                Containing("compiler='aot_eager'"), ""),
}
# Where a torch says less than the table above: (case, recording) -> (expected, actual).
VALUES_BY_VERSION = {
    ("backend", "torch-2.11.0"): (None, None),  # names neither backend
}
# Where a torch words a case differently in a way the parse shows: (case, recording) -> note.
NOTES_BY_VERSION = {
    ("dict_contains", "torch-2.15.0"): "Dictionary table must contain key 'a'",
}


def _recorded():
    for path in RECORDINGS:
        for case, recording in json.loads(path.read_text())["cases"].items():
            yield pytest.param(case, path.stem, recording, id=f"{path.stem}-{case}")


def test_every_supported_torch_is_recorded_with_every_case():
    versions = [path.stem for path in RECORDINGS]
    assert {"torch-2.11.0", "torch-2.13.0", "torch-2.14.1", "torch-2.15.0"} <= set(versions)
    for path in RECORDINGS:
        cases = json.loads(path.read_text())["cases"]
        assert set(cases) == set(EXPECTED), path.name
        assert [case for case, recording in cases.items() if recording["message"] is None] == []


@pytest.mark.parametrize("case, version, recording", list(_recorded()))
def test_each_recorded_guard_failure_is_parsed(case, version, recording):
    failure = failures_from_log(recording["message"])[0]
    kind, source, expected, actual, note = EXPECTED[case]
    expected, actual = VALUES_BY_VERSION.get((case, version), (expected, actual))
    assert (failure.kind, failure.source, failure.expected, failure.actual) == (
        kind, source, expected, actual)
    assert failure.note.startswith(NOTES_BY_VERSION.get((case, version), note))
    assert bool(failure.note) == bool(NOTES_BY_VERSION.get((case, version), note))


@pytest.mark.parametrize("case, version, recording", [
    param for param in _recorded() if param.values[0] == "size_range_two_bounds"])
def test_a_two_sided_size_guard_names_the_size_its_bounds_and_the_size_the_call_had(
        case, version, recording):
    failure = failures_from_log(recording["message"], scope={"x": torch.ones(12, 4)})[0]
    assert failure.describe() == "size guard on x.size()[0]: expected >= 2 and <= 11, actual 12"


def test_the_two_sided_guard_generate_hits_reads_the_same_with_torch_local_scope_names():
    # As the issue quoted it: the source still in L[...], from a reason not stripped of it.
    failure = parse_guard_failure("0/1: 2 <= L['input_ids'].size()[1] <= 11",
                                  scope={"input_ids": torch.ones(1, 12, dtype=torch.long)})
    assert failure.subject() == "size guard on input_ids.size()[1]"
    assert failure.values() == "expected >= 2 and <= 11, actual 12"


def test_a_size_is_read_from_the_call_only_through_names_attributes_and_subscripts():
    scope = {"x": torch.ones(3, 5), "batch": {"ids": torch.ones(2, 7)}}
    assert parse_guard_failure("0/0: 4 <= x.size()[1]", scope=scope).actual == "5"
    assert parse_guard_failure("0/0: 8 <= batch['ids'].size()[1]", scope=scope).actual == "7"
    # Anything else in the text is not run.
    assert parse_guard_failure("0/0: 2 <= f(x).size()[0]", scope=scope).actual is None
    assert parse_guard_failure("0/0: 2 <= y.size()[0]", scope=scope).actual is None
