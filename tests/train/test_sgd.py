"""`cellsearch.sgd`'s kernels against the clipped SGD written out in torch (non-finite elements,
clipped and unclipped members, a missing and a non-contiguous gradient, rows of several blocks),
in Triton's CPU interpreter (see sgd_checks.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_kernels_match_torch():
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "tests.train.sgd_checks"], cwd=root,
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all checks passed" in result.stdout
