"""Runs a module of checks in a process of its own under Triton's CPU interpreter: the interpreter
runs its library reductions (tl.sum, tl.max, ...) only if `triton.language` was imported with
TRITON_INTERPRET=1 set, which a test process that imported Triton already cannot arrange."""

import os
import subprocess
import sys
from pathlib import Path


def assert_checks_pass(module: str, interpret: bool = True) -> None:
    """Runs `python -m module` (which prints "all checks passed" at its end) and fails with its
    error output if it does not get there; under the interpreter unless not `interpret`."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", module], check=False, cwd=Path(__file__).parents[1],
        env={**env, "TRITON_INTERPRET": "1"} if interpret else env, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "all checks passed" in result.stdout
