"""`cellsearch.cross_entropy`'s kernels against torch's cross-entropy and argmax (values, hits,
gradients and their layout, training with them), in Triton's CPU interpreter (see
cross_entropy_checks.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_kernels_match_torch():
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "tests.tasks.cross_entropy_checks"], cwd=root,
        env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all checks passed" in result.stdout
