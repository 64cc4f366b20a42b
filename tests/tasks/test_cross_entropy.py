"""`engine.kernels.cross_entropy`'s kernels against torch's cross-entropy and argmax (values, hits,
gradients and their layout, training with them), in Triton's CPU interpreter (see
cross_entropy_checks.py)."""

import pytest

from tests.interpreted import assert_checks_pass

pytest.importorskip("triton")


def test_kernels_match_torch():
    assert_checks_pass("tests.tasks.cross_entropy_checks")
