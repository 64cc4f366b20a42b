"""Shared checks: a cell's outputs over a sequence and every gradient, compared between runners."""

import torch

from cellsearch.engine.plan import plan, run


def stepped(step):
    """A runner: `compile.run` with `step` (`step_eagerly`, or the compiled one)."""
    return lambda graph, params, x, state: run(plan(graph), params, x, state, step)


def values_and_gradients(graph, runner, seed=0, K=2, T=4, B=3, n=5):
    """Outputs, final states and the gradient of every leaf (x, initial states, parameters) of
    a loss that weighs each output and final state differently, in float64."""
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()

    params = {node.param: leaf(K, n, n) if node.op == "matmul" else leaf(K, n)
              for node in graph.parameters}
    x, state = leaf(K, T, B, n), tuple(leaf(K, B, n) for _ in graph.states)
    outputs, final = runner(graph, params, x, state)
    loss = (outputs * torch.linspace(-1, 1, n, dtype=torch.float64)).sum()
    loss = loss + sum((f * f).sum() for f in final)
    grads = torch.autograd.grad(loss, [x, *state, *params.values()], allow_unused=True)
    return [outputs, *final, *(g if g is not None else torch.zeros(()) for g in grads)]


def assert_same(expected: list, actual: list, message: str = "") -> None:
    """Equal to float64 rounding, relative to each tensor's scale (products of products reach
    huge values)."""
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        finite = a[torch.isfinite(a)]
        scale = finite.abs().max().item() if finite.numel() else 1.0
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * max(scale, 1.0), equal_nan=True,
                                   msg=message)


def planned(runner):
    """A runner of a planned engine (`compile.run`, `fused.run_fused`)."""
    return lambda graph, params, x, state: runner(plan(graph), params, x, state)
