import pytest
import torch

from fullgraph.checks import ParityError, assert_parity


def test_equal_tensors_pass_and_different_ones_fail():
    assert_parity(torch.ones(3), torch.ones(3), atol=0, rtol=0)
    with pytest.raises(ParityError, match=r"parity failed at torch.float32 \(atol=0, rtol=0\)"):
        assert_parity(torch.ones(3), torch.zeros(3), atol=0, rtol=0)


@pytest.mark.parametrize("actual, expected, options, error, match", [
    ([1.0, 2.0], torch.ones(2), {}, TypeError, "assert_parity: actual must be a Tensor, got list"),
    (torch.ones(2), (1.0, 1.0), {}, TypeError, "assert_parity: expected must be a Tensor, got tuple"),
    (torch.ones(2), torch.ones(2), {"atol": -1e-3}, ValueError, "assert_parity: atol must be >= 0, got -0.001"),
    (torch.ones(2), torch.ones(2), {"rtol": -1}, ValueError, "assert_parity: rtol must be >= 0, got -1"),
    (torch.ones(2), torch.ones(2), {"atol": float("nan")}, ValueError, "atol must be >= 0, got nan"),
    (torch.ones(2), torch.ones(2), {"atol": "1e-3"}, TypeError, "atol must be a number or None, got '1e-3'"),
    (torch.ones(2), torch.ones(2), {"rtol": True}, TypeError, "rtol must be a number or None, got True"),
    (torch.ones(2), torch.ones(2), {"dtype": "bfloat16"}, TypeError, "dtype must be a torch.dtype or None"),
    (torch.ones(2), torch.ones(2), {"msg": 3}, TypeError, "assert_parity: msg must be a str or None"),
])
def test_misuse_names_the_argument(actual, expected, options, error, match):
    with pytest.raises(error, match=match):
        assert_parity(actual, expected, **options)
