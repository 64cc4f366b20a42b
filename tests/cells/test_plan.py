"""`compile.plan`/`run` (the planner: hoisting, flattened sums, fused static addends,
`StaticPart`) against a planner-free reference that evaluates the graph node by node."""

import pytest
import torch
from hypothesis import given, settings

from cellsearch.cells.equations import parse
from cellsearch.engine.plan import step_eagerly

from .random_graphs import direct_output_graphs, graphs
from .sequences import assert_same, stepped, values_and_gradients

_UNARY = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
          "identity": lambda v: v}


def node_by_node(graph, params, x, state):
    """The cell stepped through its nodes in order: x (K, T, B, n), state (K, B, n) each."""
    K, T, B, n = x.shape
    outputs = []
    for t in range(T):
        values = {"x": x[:, t], **dict(zip(graph.states, state))}
        for node in graph.nodes:
            inputs = [values[i] for i in node.inputs]
            if node.op == "matmul":  # a matrix applied to 1 or a bias sees it as a vector
                values[node.name] = inputs[0].expand(K, B, n) @ params[node.param].transpose(1, 2)
            elif node.op == "bias":
                values[node.name] = params[node.param].unsqueeze(1)
            elif node.op == "one":
                values[node.name] = torch.ones((), dtype=x.dtype)
            elif node.op in _UNARY:
                values[node.name] = _UNARY[node.op](inputs[0])
            else:
                a, b = inputs
                values[node.name] = {"add": a + b, "sub": a - b, "mul": a * b}[node.op]
        state = tuple(values[out].expand(K, B, n) for out in graph.outputs)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def assert_matches_reference(graph):
    assert_same(values_and_gradients(graph, node_by_node, T=3, B=2, n=4),
                values_and_gradients(graph, stepped(step_eagerly), T=3, B=2, n=4))


@pytest.mark.parametrize("text", [
    # a new state that is a matrix product which a sum also reads: its static part must not be
    # folded into it (nor, when it reads x, into a StaticPart)
    "h' = W_1 h\nc' = h' + W_2 x + b_1 + c",
    "h' = W_2 x\nc' = W_1 c + h' + b_1 + h",
    "h' = W_1 h + W_2 x + b_1\nc' = tanh(h') * c",
    # sums with negative first terms, constants, x itself, biases-only outputs
    "h' = 1 - W_1 h + x - b_1",
    "h' = tanh(b_1 - W_1 h) * c + W_2 x\nc' = b_2",
    "h' = 1 - sigm(W_1 h + W_2 x) + c\nc' = relu(W_3 c - W_4 x)",
    "h' = W_1 (W_2 h + b_1) + W_3 1 + x",
])
def test_planned_cells_match_the_node_by_node_reference(text):
    assert_matches_reference(parse(text))


@settings(max_examples=40, deadline=None)
@given(graph=graphs)
def test_random_cells_match_the_node_by_node_reference(graph):
    assert_matches_reference(graph)


@settings(max_examples=40, deadline=None)
@given(graph=direct_output_graphs)
def test_random_cells_with_direct_outputs_match_the_node_by_node_reference(graph):
    assert_matches_reference(graph)
