import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph, parse
from cellsearch.cells.graph import CellGraph, GraphError, Node

from .random_graphs import graphs


def shuffled_and_renamed(graph: CellGraph, seed: int) -> CellGraph:
    """The same graph with anonymous nodes renamed, nodes reordered and + / * operands swapped."""
    rng = random.Random(seed)
    names = {n.name: f"_tmp{rng.randrange(10**9)}_{i}" for i, n in enumerate(graph.nodes)
             if n.name.startswith("_")}
    params = {n.param: f"{n.param[0]}_p{rng.randrange(10**9)}_{i}"
              for i, n in enumerate(graph.parameters)}
    nodes = []
    for node in graph.nodes:
        inputs = tuple(names.get(i, i) for i in node.inputs)
        if node.op in ("add", "mul") and rng.random() < 0.5:
            inputs = inputs[::-1]
        nodes.append(Node(names.get(node.name, node.name), node.op, inputs,
                          params.get(node.param), node.init))
    rng.shuffle(nodes)
    return CellGraph(nodes)


@settings(max_examples=200, deadline=None)
@given(graphs)
def test_json_round_trip(graph):
    again = CellGraph.from_json(graph.to_json())
    assert again == graph
    assert again.nodes == graph.nodes


@settings(max_examples=200, deadline=None)
@given(graphs)
def test_text_round_trip(graph):
    assert parse(format_graph(graph)) == graph


@settings(max_examples=200, deadline=None)
@given(graphs, st.integers(0, 2**31))
def test_hash_invariant_under_renaming_reordering_commuting(graph, seed):
    assert shuffled_and_renamed(graph, seed).canonical_hash() == graph.canonical_hash()


def test_zoo_hashes_are_all_distinct():
    hashes = {name: zoo.get(name).canonical_hash() for name in zoo.names()}
    assert len(set(hashes.values())) == len(hashes)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_hash_invariance(name):
    graph = zoo.get(name)
    for seed in range(20):
        assert shuffled_and_renamed(graph, seed).canonical_hash() == graph.canonical_hash()


@pytest.mark.parametrize(
    "a, b",
    [
        ("h' = tanh(W_a x + W_b h)", "h' = tanh(W_a x - W_b h)"),  # + vs -
        ("h' = tanh(W_a x - W_b h)", "h' = tanh(W_b h - W_a x)"),  # - is not commutative
        ("h' = tanh(W_a x + W_b h)", "h' = sigm(W_a x + W_b h)"),  # activation
        ("h' = tanh(W_a x + W_b h)", "h' = tanh(W_a x + W_b h)\ninit W_b = 1"),  # Linear(1, .)
        ("h' = tanh(W_a x + h)", "h' = tanh(x + W_a h)"),  # which operand the matrix takes
        # one matrix used twice differs from two matrices
        ("a = W_a x\nh' = a * a + h", "h' = W_a x * W_b x + h"),
        # a bias of 1 differs from a bias of 0
        ("h' = h + x + b_a", "h' = h + x + b_a\ninit b_a = 1"),
    ],
)
def test_hash_distinguishes_different_graphs(a, b):
    assert parse(a).canonical_hash() != parse(b).canonical_hash()


def test_hash_ignores_intermediate_and_parameter_names():
    a = parse("q = sigm(W_1 x + W_2 h + b_1)\nh' = q * h + x")
    b = parse("z = sigm(W_2 h + W_9 x + b_z)\nh' = x + h * z")
    assert a.canonical_hash() == b.canonical_hash()
    assert a != b  # but they are different graphs (different names)


def node(name, op, *inputs, param=None, init=0.0):
    return Node(name, op, inputs, param, init)


@pytest.mark.parametrize(
    "nodes, message",
    [
        ([node("h'", "add", "x", "q")], "'q', which is not defined"),
        ([node("a", "tanh", "b"), node("b", "tanh", "a"), node("h'", "add", "a", "h"),
          node("_x", "mul", "x", "h")], "cycle"),
        ([node("h'", "add", "x", "h"), node("q", "tanh", "x")], "'q'"),
        ([node("h'", "tanh", "x")], "state 'h' is never read"),
        ([node("h'", "tanh", "h")], "never reads its input x"),
        ([node("h'", "add", "x", "c")], "needs its output c' defined"),
        ([node("c'", "add", "x", "c")], "defines no h'"),
        ([node("h'", "add", "x")], "takes 2 operand"),
        ([node("h'", "exp", "x")], "unknown operation"),
        ([node("h'", "matmul", "x")], "needs a parameter name"),
        ([node("a", "matmul", "x", param="W"), node("b", "matmul", "h", param="W"),
          node("h'", "add", "a", "b")], "parameter 'W' is used twice"),
        ([node("h'", "add", "x", "h"), node("h'", "add", "x", "h")], "defined twice"),
        ([node("x", "tanh", "h"), node("h'", "add", "x", "h")], "name of an input"),
    ],
)
def test_invalid_graphs_say_what_is_wrong(nodes, message):
    with pytest.raises(GraphError, match=message.replace("(", r"\(")):
        CellGraph(nodes)


def test_graph_is_immutable():
    graph = zoo.get("gru")
    with pytest.raises(AttributeError):
        graph.nodes = ()


def test_from_json_rejects_garbage():
    with pytest.raises(GraphError, match="invalid JSON"):
        CellGraph.from_json("{nope")
    with pytest.raises(GraphError, match="bad node"):
        CellGraph.from_json(json.dumps({"nodes": [{"op": "tanh"}]}))
