"""Numerical parity with an eager reference, at tolerances set by dtype.

The table is measured, not guessed: the tiny reference model's logits in each dtype against the
same (rounded) weights run in fp32, over several seeds, with a margin of 2-4x over the worst case
seen. Deeper models accumulate more rounding: pass `depth`, or atol/rtol to set the tolerance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from ._message import CheckFailure, check_msg

__all__ = ["LOGIT_TOLERANCES", "TABLE_DEPTH", "ParityError", "assert_parity", "exact_matmuls",
           "logit_tolerance"]

# dtype -> (atol, rtol) for logits of magnitude about 1-10. fp32 assumes
# torch.set_float32_matmul_precision("highest"); TF32 matmuls need the bf16-like row.
LOGIT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (8e-2, 2e-2),
}
# Layers of the model the table was measured on.
TABLE_DEPTH = 2


def logit_tolerance(dtype: torch.dtype, *, depth: int = TABLE_DEPTH) -> tuple[float, float]:
    """(atol, rtol) for logits after `depth` layers: the table's, times sqrt(depth / TABLE_DEPTH).

    Each layer adds its own, independent rounding to the residual stream, so the error grows like
    a random walk, with the square root of depth. Llama-2-7B in bf16 (32 layers) bears this out:
    its worst logit differences, eager vs ReferenceLlama and compiled vs eager, were 2.4x and 3.1x
    the tiny model's, within the 4x this allows.
    """
    if dtype not in LOGIT_TOLERANCES:
        known = ", ".join(str(d) for d in LOGIT_TOLERANCES)
        raise ValueError(f"dtype: no tolerance for {dtype}; known: {known}; or pass atol and rtol")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int (layers), got {depth!r}")
    scale = max(1.0, depth / TABLE_DEPTH) ** 0.5
    atol, rtol = LOGIT_TOLERANCES[dtype]
    return atol * scale, rtol * scale


@contextlib.contextmanager
def exact_matmuls() -> Iterator[None]:
    """fp32 matmuls at "highest" precision, as the fp32 row of the table assumes; restored after."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class ParityError(CheckFailure):
    """Outputs differ from the reference by more than the tolerance."""


def assert_parity(
    actual: Tensor,
    expected: Tensor,
    *,
    dtype: torch.dtype | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    depth: int = TABLE_DEPTH,
    msg: str | None = None,
) -> None:
    """Like torch.testing.assert_close, with the tolerance looked up by `dtype` and `depth`.

    `dtype` is the precision the computation ran in (default: actual.dtype); `depth` the layers
    it went through (see logit_tolerance); atol and rtol override the table.
    """
    __tracebackhide__ = True
    _check_arguments(actual, expected, dtype=dtype, atol=atol, rtol=rtol)
    check_msg("assert_parity", msg)
    dtype = actual.dtype if dtype is None else dtype
    if atol is None or rtol is None:
        table_atol, table_rtol = logit_tolerance(dtype, depth=depth)
        atol = table_atol if atol is None else atol
        rtol = table_rtol if rtol is None else rtol
    try:
        torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
    except AssertionError as error:
        headline = f"parity failed at {dtype} (atol={atol:g}, rtol={rtol:g})"
        text = f"{headline}\n{error}"
        raise ParityError(f"{msg}\n\n{text}" if msg else text) from None


def _check_arguments(actual: object, expected: object, *, dtype: object, atol: object,
                     rtol: object) -> None:
    for name, value in (("actual", actual), ("expected", expected)):
        if not isinstance(value, Tensor):
            raise TypeError(f"assert_parity: {name} must be a Tensor, got {type(value).__name__}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"assert_parity: dtype must be a torch.dtype or None, got {dtype!r}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"assert_parity: {name} must be a number or None, got {value!r}")
        if not value >= 0:  # NaN too: no difference would ever be within it
            raise ValueError(f"assert_parity: {name} must be >= 0, got {value!r}")
