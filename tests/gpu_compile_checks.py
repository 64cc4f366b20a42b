"""Every kind of Triton kernel the package launches on a GPU, compiled for an H100 (sm_90) on a
machine without one, by running the code that launches them: run by test_gpu_compile.py in a
process of its own. Triton's CPU interpreter, which the other kernel tests use, runs what the
compiler may refuse (types that do not unify, unsupported operations); a GPU session is too
scarce to find that out there.

Triton's active driver is replaced by one that only names the target, and every launch only
compiles (as `JITFunction.warmup` does): the kernels run nowhere, so the values computed here
mean nothing; what counts is that each kernel compiled to a cubin.

    python -m tests.gpu_compile_checks              (the test's checks)
    python -m tests.gpu_compile_checks --sweep 40   (the zoo and 3 x 40 mutants' kernels)
"""

from __future__ import annotations

import os
import random

assert "TRITON_INTERPRET" not in os.environ, "compiles, so not under the interpreter"

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver, jit

TARGET = GPUTarget("cuda", 90, 32)  # an H100


class CompileOnly:
    """The little of a driver that compiling asks for."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return TARGET

    def is_active(self) -> bool:
        return True


compiled: dict[str, bool] = {}  # kernel name -> whether every compile of it gave a cubin
EXPECTED = {  # every kernel function of the package (the generated ones by their names)
    "forward_kernel", "backward_kernel",  # fused, per step and persistent
    "stage_kernel", "stage_backward_kernel", "window_kernel", "window_backward_kernel",
    "copies_kernel",  # mixed
    "_forward_kernel", "_backward_kernel", "_grouped_forward_kernel",
    "_grouped_backward_kernel",  # cross_entropy
    "_square_sums_kernel", "_update_kernel", "_grouped_square_sums_kernel",
    "_grouped_scales_kernel", "_grouped_update_kernel",  # sgd
    "_products_kernel",  # products
}


def compiling_only() -> None:
    driver.set_active(CompileOnly())
    launch = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        kernel = launch(self, *args, grid=grid, warmup=True, **kwargs)
        name = self.fn.__name__
        compiled[name] = compiled.get(name, True) and "cubin" in kernel.asm
        return kernel

    jit.JITFunction.run = run


def graphs():
    from cellsearch.cells import zoo
    from cellsearch.cells.mutate import mutate

    yield from (zoo.get(name) for name in ("lstm", "gru", "mut1"))
    yield mutate(zoo.get("gru"), random.Random(1)).graph


def parameters(graph, K: int, n: int) -> dict[str, torch.Tensor]:
    from cellsearch.engine.nn import parameter_shape

    return {node.param: torch.randn(K, *parameter_shape(node, n)).requires_grad_()
            for node in graph.parameters}


def backward(outputs) -> None:
    leaves = [t for t in outputs if t.requires_grad]
    torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])


def check_the_fused_kernels(cells=None) -> None:
    """Each mode's forward and backward kernels (`kernels.fused`, `kernels.persistent`)."""
    from cellsearch.engine.kernels.fused import MODES

    for graph in cells or graphs():
        for mode in MODES:
            compile_fused(graph, mode)


def compile_fused(graph, mode: str) -> None:
    from cellsearch.engine.kernels.fused import run_fused
    from cellsearch.engine.plan import plan

    x = torch.randn(2, 3, 4, 16).requires_grad_()
    state = tuple(torch.zeros(2, 4, 16) for _ in graph.states)
    outputs, final = run_fused(plan(graph), parameters(graph, 2, 16), x, state, mode=mode)
    backward([outputs, *final])


def sweep(mutants: int) -> None:
    """Wider than the test: every zoo cell and `mutants` mutants each of the GRU, MUT3 and the
    LSTM (a search meets thousands), every mode, IEEE and TF32; prints each failure and a
    count instead of stopping at the first (benchmarks/RESULTS.md records a run)."""
    from cellsearch.cells import zoo
    from cellsearch.cells.equations import format_graph
    from cellsearch.cells.mutate import mutate
    from cellsearch.engine.kernels.fused import MODES

    cells = [zoo.get(name) for name in zoo.names()] + [
        mutate(zoo.get(parent), random.Random(seed)).graph
        for parent in ("gru", "mut3", "lstm") for seed in range(mutants)]
    failures = 0
    for precision in (in_ieee, in_tf32):
        for graph in cells:
            for mode in MODES:
                try:
                    precision(lambda graph=graph, mode=mode: compile_fused(graph, mode))
                except Exception as error:  # noqa: BLE001 - each failure reported, then counted
                    failures += 1
                    print(f"FAILED {mode}: {format_graph(graph)!r}: {str(error)[:300]}")
    print(f"{len(cells)} cells x {len(MODES)} modes x 2 precisions: {failures} failed; "
          f"{len(compiled)} kernels by name")


def check_the_mixed_kernels() -> None:
    """The mixed engine's step kernels, forward and backward, float32 (TF32 products)."""
    from cellsearch.cells.equations import parse
    from cellsearch.engine.mixed import Layer, run_mixed
    from cellsearch.engine.plan import plan

    layers = []
    for index, graph in enumerate(graphs()):
        K, n = 1 + index % 3, 8 + 5 * index
        x = torch.randn(K, 3, 4, n).requires_grad_()
        state = tuple(torch.zeros(K, 4, n) for _ in graph.states)
        layers.append(Layer(plan(graph), parameters(graph, K, n), x, state))
    gated = parse("h' = tanh(W_xh x + b_h) * h")  # a stage without matmuls
    for kernel in ("triton", "persistent"):
        backward([t for outputs, final in run_mixed(layers, kernel=kernel)
                  for t in (outputs, *final)])
        x = torch.randn(2, 3, 4, 8).requires_grad_()
        outputs, _ = run_mixed([Layer(plan(gated), parameters(gated, 2, 8), x,
                                      (torch.zeros(2, 4, 8),))], kernel=kernel)[0]
        backward([outputs])


def check_the_products_kernel() -> None:
    """The grouped products, forward and backward: inputs, matrices and biases' gradients."""
    from cellsearch.engine.kernels.products import together
    from cellsearch.engine.products import Product

    x, w, b = (torch.randn(*shape).requires_grad_() for shape in ((2, 70, 8), (2, 8, 5), (2, 5)))
    backward(together([Product(x, [w, w[:, :, :3]], [b, None])]))


def check_the_copies_kernel() -> None:
    """The copies in float64, int64 and bool too (the mixed engine's float32 ones compile above)."""
    from cellsearch.engine.kernels.copies import Copies

    copies = Copies()
    copies.add(torch.zeros(3, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64),
               zero_where=torch.tensor([True, False, True]).view(3, 1))
    copies.launch()
    for dtype in (torch.int64, torch.bool):  # a window's tokens and flags
        copies = Copies()
        copies.add(torch.zeros(3, 4, dtype=dtype), torch.ones(3, 4, dtype=dtype))
        copies.launch()


def check_the_loss_kernels() -> None:
    from cellsearch.engine.kernels.cross_entropy import (
        grouped_loss_sums,
        softmax_cross_entropy,
    )

    for bias in (None, torch.randn(2, 40).requires_grad_()):
        logits = torch.randn(3, 2, 4, 40).requires_grad_()
        nll, _ = softmax_cross_entropy(logits, torch.randint(0, 40, (3, 4)), bias)
        backward([nll])
    logits = [torch.randn(K, 3, 4, 40).transpose(0, 1).requires_grad_() for K in (2, 1)]
    backward([grouped_loss_sums(logits, [torch.randint(0, 40, (3, 4))] * 2,
                                [torch.ones(3, 4)] * 2)])


def check_the_sgd_kernels() -> None:
    from cellsearch.engine.kernels.sgd import GroupedSGD, clipped_sgd_

    flat = torch.randn(2, 30)
    grads = [torch.randn(2, 5, 4).transpose(1, 2), torch.randn(2, 10)]
    clipped_sgd_(flat, [20, 10], grads, torch.ones(2), torch.ones(2))
    parameters_ = [flat[:, :20].view(2, 4, 5), flat[:, 20:]]
    GroupedSGD([(parameters_, torch.ones(2), torch.ones(2))])(grads)


def in_ieee(check) -> None:
    check()


def in_tf32(check) -> None:
    """`check` with the products in TF32, as training on a GPU runs them (`train.evaluate` allows
    TF32), where a CPU tensor's would be IEEE."""
    from cellsearch.engine.kernels import codegen, fused

    ieee = codegen.matmul_precision
    codegen.matmul_precision = fused.matmul_precision = lambda reference: "tf32"
    try:
        check()
    finally:
        codegen.matmul_precision = fused.matmul_precision = ieee


if __name__ == "__main__":
    import sys

    compiling_only()
    if sys.argv[1:2] == ["--sweep"]:
        sweep(int(sys.argv[2]))
        raise SystemExit(0)
    for precision in (in_ieee, in_tf32):
        precision(check_the_fused_kernels)
        precision(check_the_mixed_kernels)
        precision(check_the_products_kernel)
    check_the_copies_kernel()
    check_the_loss_kernels()
    check_the_sgd_kernels()
    failed = sorted(name for name, ok in compiled.items() if not ok)
    assert not failed, f"compiled without a cubin: {failed}"
    missing = EXPECTED - set(compiled)
    assert not missing, f"never launched: {sorted(missing)}"
    print(f"compiled for sm_90: {', '.join(sorted(compiled))}")
    print("all checks passed")
