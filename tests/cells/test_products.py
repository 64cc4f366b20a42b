"""`engine.kernels.products` against the products in torch (values and every gradient, strided
and shared operands, biases or none), kept tables, shapes refused, and a mixed step trained with
it, in Triton's CPU interpreter (see products_checks.py)."""

import pytest

from tests.interpreted import assert_checks_pass

pytest.importorskip("triton")


def test_kernel_matches_torch():
    assert_checks_pass("tests.cells.products_checks")
