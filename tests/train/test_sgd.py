"""`engine.kernels.sgd`'s kernels against the clipped SGD written out in torch (non-finite elements,
clipped and unclipped members, a missing and a non-contiguous gradient, rows of several blocks),
the grouped update of several populations too, and a mixed step trained with it, in Triton's CPU
interpreter (see sgd_checks.py)."""

import pytest

from tests.interpreted import assert_checks_pass

pytest.importorskip("triton")


def test_kernels_match_torch():
    assert_checks_pass("tests.train.sgd_checks")
