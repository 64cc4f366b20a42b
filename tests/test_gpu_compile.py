"""Every kind of Triton kernel the package launches on a GPU compiles for an H100, here, without
one (see gpu_compile_checks.py): generated kernels of the zoo and of mutants in every mode, the
mixed engine's, the loss's and the SGD's."""

import pytest

from tests.interpreted import assert_checks_pass

pytest.importorskip("triton")


@pytest.mark.slow
def test_every_kernel_compiles_for_an_h100():
    assert_checks_pass("tests.gpu_compile_checks", interpret=False)
