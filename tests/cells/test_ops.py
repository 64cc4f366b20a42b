"""The operation table: every table of ops in the package derives from it, and each engine's
expressions compute what torch computes."""

from types import SimpleNamespace

import pytest
import torch

from cellsearch.cells import equations, graph, mutate, ops
from cellsearch.engine import plan
from cellsearch.engine.kernels import codegen

# Enough of `triton.language` to evaluate a kernel expression on torch tensors.
tl = SimpleNamespace(exp=torch.exp, maximum=lambda a, b: torch.clamp(a, min=b),
                     where=torch.where)


def test_every_table_of_ops_is_the_operation_tables():
    activations = {op.name for op in ops.OPERATIONS if op.kind == "activation"}
    elementwise = {op.name for op in ops.OPERATIONS if op.kind == "elementwise"}
    assert set(graph.ARITY) == set(ops.BY_NAME)
    assert set(graph.ACTIVATIONS) == activations == set(plan._ACTIVATIONS)
    assert set(equations.FUNCTION_NAMES) == activations
    assert set(equations.SYMBOLS) == elementwise
    assert set(codegen.FORWARD) == activations | elementwise
    assert set(codegen.ACTIVATION_GRADIENT) == activations
    chosen = {c for c in mutate.ACTIVATION_CHOICES if isinstance(c, str)}
    assert chosen == {"tanh", "sigmoid", "relu"}


@pytest.mark.parametrize("op", [op for op in ops.OPERATIONS if op.kind == "activation"],
                         ids=lambda op: op.name)
def test_an_activations_kernel_expressions_match_torch(op):
    v = torch.linspace(-4, 4, 101, dtype=torch.float64).requires_grad_()
    eager = plan._ACTIVATIONS[op.name](v)
    (expected_gradient,) = torch.autograd.grad(eager, v, torch.ones_like(v) * 0.7)
    value = eval(op.triton.format("v"), {"tl": tl, "v": v.detach()})
    gradient = eval(op.triton_gradient.format(g="g", y="y"),
                    {"tl": tl, "g": torch.full_like(v, 0.7), "y": value})
    torch.testing.assert_close(value, eager.detach())
    torch.testing.assert_close(gradient, expected_gradient)


@pytest.mark.parametrize("op", [op for op in ops.OPERATIONS if op.kind == "elementwise"],
                         ids=lambda op: op.name)
def test_an_operators_spellings_parse_to_it_and_it_prints_as_its_spelling(op):
    for spelling in (op.spelling, *op.aliases):
        cell = equations.parse(f"h' = h {spelling} x")
        assert [n.op for n in cell.nodes] == [op.name]
    printed = equations.format_graph(equations.parse(f"h' = h {op.spelling} x"))
    assert f"h {op.spelling} x" in printed


@pytest.mark.parametrize("op", [op for op in ops.OPERATIONS if op.kind == "activation"],
                         ids=lambda op: op.name)
def test_an_activations_spellings_parse_to_it(op):
    for spelling in (op.spelling, *op.aliases):
        cell = equations.parse(f"h' = {spelling}(h + x)")
        assert [n.op for n in cell.nodes] == ["add", op.name]
