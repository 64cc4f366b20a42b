import random
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph, parse
from cellsearch.cells.graph import CellGraph, GraphError
from cellsearch.cells.mutate import TRANSFORMATIONS, Mutation, mutate, transform
from cellsearch.nn import Cell

from .cells.random_graphs import graphs

KINDS = tuple(t.kind for t in TRANSFORMATIONS)


def assert_valid_child(mutation: Mutation, parent: CellGraph) -> None:
    child = mutation.graph
    assert isinstance(child, CellGraph)  # validated on construction
    assert child.states == parent.states
    assert child.canonical_hash() != parent.canonical_hash()
    assert parse(format_graph(child)) == child
    assert 1 <= len(mutation.kinds) <= 3
    assert set(mutation.kinds) <= set(KINDS)
    assert len(mutation.description.split("; ")) == len(mutation.kinds)


def assert_runs(graph: CellGraph, seed: int) -> None:
    torch.manual_seed(seed)
    cell = Cell(graph, 4)
    x = torch.randn(3, 4)  # (B, n)
    state = tuple(torch.randn(3, 4) for _ in graph.states)
    new_state = cell(x, state)
    assert len(new_state) == len(graph.states)
    for value in new_state:
        assert value.shape == (3, 4)
        assert torch.isfinite(value).all()


# -- random mutations of the zoo ------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_mutations_compile_and_run(name):
    parent = zoo.get(name)
    for seed in range(300):
        mutation = mutate(parent, random.Random(seed))
        assert_valid_child(mutation, parent)
        assert_runs(mutation.graph, seed)


def test_many_zoo_mutations_are_valid():
    # Thousands in all: 200 more seeds per zoo cell than the compile-and-run test, checked cheaply.
    for name in zoo.names():
        parent = zoo.get(name)
        for seed in range(1000, 1200):
            assert_valid_child(mutate(parent, random.Random(seed)), parent)


@pytest.mark.parametrize("name", zoo.names())
def test_mutation_chains_stay_valid_and_run(name):
    for chain in range(8):
        rng = random.Random(chain)
        graph = zoo.get(name)
        for _ in range(20):
            mutation = mutate(graph, rng)
            assert_valid_child(mutation, graph)
            graph = mutation.graph
        assert_runs(graph, chain)


def test_every_kind_and_every_count_occurs():
    kinds, counts = Counter(), Counter()
    for name in zoo.names():
        for seed in range(100):
            mutation = mutate(zoo.get(name), random.Random(seed))
            kinds.update(mutation.kinds)
            counts[len(mutation.kinds)] += 1
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= 50, kinds
    assert set(counts) == {1, 2, 3}
    assert min(counts.values()) >= 50, counts


def test_small_p_gives_small_mutations_on_small_graphs():
    # The Tanh RNN has 5 nodes with operands: with p ~ U[0, 1], one transformation is common.
    counts = Counter(len(mutate(zoo.get("tanh"), random.Random(s)).kinds) for s in range(600))
    assert counts[1] > 100 and counts[3] > 100


# -- determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tanh", "lstm", "gru"])
def test_same_seed_same_mutation(name):
    for seed in range(20):
        first = mutate(zoo.get(name), random.Random(seed))
        second = mutate(zoo.get(name), random.Random(seed))
        assert first == second
        assert first.graph.nodes == second.graph.nodes


def test_different_seeds_mostly_different_graphs():
    children = {mutate(zoo.get("lstm"), random.Random(seed)).graph.canonical_hash()
                for seed in range(100)}
    assert len(children) >= 90


# -- property tests -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(graphs, st.integers(0, 2**32 - 1))
def test_mutations_of_random_graphs_are_valid_and_round_trip(graph, seed):
    mutation = mutate(graph, random.Random(seed))
    assert_valid_child(mutation, graph)
    assert CellGraph.from_json(mutation.graph.to_json()) == mutation.graph


@settings(max_examples=100, deadline=None)
@given(graphs, st.integers(0, 2**32 - 1))
def test_mutation_leaves_its_parent_unchanged(graph, seed):
    before = graph.to_json()
    mutate(graph, random.Random(seed))
    assert graph.to_json() == before


# -- each transformation, exactly -----------------------------------------------------------------


def matrix(graph: CellGraph, param: str) -> str:
    """The name of the node applying matrix `param`."""
    return next(node.name for node in graph.nodes if node.param == param)


def transform_until(graph: CellGraph, kind: str, anchor: str, wanted: str) -> Mutation:
    """`transform` with the first seed whose description contains `wanted`."""
    for seed in range(1000):
        try:
            mutation = transform(graph, kind, anchor, random.Random(seed))
        except GraphError:
            continue
        if wanted in mutation.description:
            return mutation
    raise AssertionError(f"no seed gives {wanted!r}")


TANH = zoo.get("tanh")


def test_replace_activation_by_linear():
    mutation = transform_until(TANH, "replace_activation", "h'", "-> Linear(1.1, ·)")
    assert mutation.graph == parse("h' = W_m1 (W_xh x + W_hh h + b_h) + b_m1\ninit W_m1 = 1.1")
    linear = mutation.graph.node(matrix(mutation.graph, "W_m1"))
    assert (linear.op, linear.init) == ("matmul", 1.1)
    assert mutation.graph.node(mutation.graph.node("h'").inputs[1]).op == "bias"


def test_linear_counts_as_an_activation_and_can_be_replaced():
    linear = parse("h' = W_m1 (W_xh x + W_hh h + b_h) + b_m1\ninit W_m1 = 0.9")
    back = transform_until(linear, "replace_activation", "h'", "Linear(0.9, ·) -> tanh")
    assert back.graph == TANH  # the Linear's own W and b are gone
    other = transform_until(linear, "replace_activation", "h'", "-> Linear(0, ·)")
    # A new matrix and bias, named apart from the parent's.
    assert other.graph == parse("h' = W_m2 (W_xh x + W_hh h + b_h) + b_m2")


def test_activation_set_excludes_the_current_one():
    seen = {transform(TANH, "replace_activation", "h'", random.Random(s)).description
            for s in range(200)}
    assert seen == {f"replace activation h': tanh -> {a}" for a in
                    ["sigmoid", "relu", "Linear(0, ·)", "Linear(1, ·)", "Linear(0.9, ·)",
                     "Linear(1.1, ·)"]}


def test_replace_elementwise():
    lstm = zoo.get("lstm")
    mutation = transform_until(lstm, "replace_elementwise", "c'", "+ -> -")
    expected = zoo.source("lstm").replace("c' = c * f + i * j", "c' = c * f - i * j")
    assert mutation.graph == parse(expected)
    with pytest.raises(GraphError, match="does not apply"):
        transform(lstm, "replace_elementwise", "i", random.Random(0))  # tanh, not elementwise


def test_insert_activation():
    mutation = transform_until(TANH, "insert_activation", matrix(TANH, "W_hh"), "insert relu")
    assert mutation.graph == parse("h' = tanh(W_xh x + W_hh relu(h) + b_h)")
    linear = transform_until(TANH, "insert_activation", "h'", "insert Linear(1, ·)")
    assert linear.graph == parse("h' = tanh(W_m1 (W_xh x + W_hh h + b_h) + b_m1)\n"
                                 "init W_m1 = 1")


def test_insert_activation_into_one_operand_of_a_square():
    square = parse("s = W_xh x + h\nh' = tanh(s * s)")
    product = square.node("h'").inputs[0]
    mutation = transform_until(square, "insert_activation", product, "insert relu")
    expected = parse("s = W_xh x + h\nh' = tanh(relu(s) * s)")
    assert mutation.graph.canonical_hash() == expected.canonical_hash()


def test_remove_node():
    removed = transform(TANH, "remove_node", matrix(TANH, "W_hh"), random.Random(0))
    assert removed.graph == parse("h' = tanh(W_xh x + h + b_h)")
    lstm = zoo.get("lstm")
    gate = transform(lstm, "remove_node", "i", random.Random(0))
    # `i` is gone: its user reads its operand, an anonymous sum.
    assert gate.graph == parse(
        zoo.source("lstm").replace("i  = tanh(W_xi x + W_hi h + b_i)\n", "")
        .replace("i * j", "(W_xi x + W_hi h + b_i) * j")
    )


def test_remove_a_state_output_keeps_its_name():
    mutation = transform(zoo.get("lstm-o"), "remove_node", "h'", random.Random(0))
    assert mutation.graph == parse(zoo.source("lstm-o").replace("h' = tanh(c')", "h' = id(c')"))


@pytest.mark.parametrize("name, anchor, applies", [
    ("lstm", "h'", False),  # two inputs
    ("lstm", "c'", False),  # two outputs: read by h' and by the next step
    ("lstm-o", "h'", True),  # one input, one output: the next step's state
    ("gru", "z", False),  # read by z * h and by 1 - z
    ("gru", "r", True),
])
def test_remove_node_needs_one_input_and_one_output(name, anchor, applies):
    graph = zoo.get(name)
    if applies:
        assert transform(graph, "remove_node", anchor, random.Random(0)).kinds == ("remove_node",)
    else:
        with pytest.raises(GraphError, match="does not apply"):
            transform(graph, "remove_node", anchor, random.Random(0))


@pytest.mark.parametrize("anchor, ancestor, new_output", [
    ("o", "h", "h' = tanh(c') * h"),
    ("h'", "c'", "h' = id(c')"),  # a state output replaced by an ancestor keeps the output
], ids=["node", "state-output"])
def test_replace_with_ancestor(anchor, ancestor, new_output):
    lstm = zoo.get("lstm")
    mutation = transform_until(lstm, "replace_with_ancestor", anchor, f"its ancestor {ancestor}")
    assert mutation.graph == parse(
        zoo.source("lstm").replace("o  = sigm(W_xo x + W_ho h + b_o)\n", "")
        .replace("h' = tanh(c') * o", new_output)
    )


def test_replace_with_combination():
    mutation = transform_until(TANH, "replace_with_combination", "h'", "h' by x * h")
    assert mutation.graph == parse("h' = x * h")
    named = transform_until(zoo.get("gru"), "replace_with_combination", "z", "z by x - r")
    assert named.graph.node("z").op == "sub"
    assert named.graph.node("z").inputs == ("x", "r")


def test_replace_with_combination_never_makes_a_cycle():
    # c' feeds h' = tanh(c') * o: ancestors of A = h' include c' and tanh(c'), never to be picked.
    lstm = zoo.get("lstm")
    forbidden = {"c'", lstm.node("h'").inputs[0]}
    operands_from_h = set()
    for seed in range(1000):
        try:
            mutation = transform(lstm, "replace_with_combination", "c'", random.Random(seed))
        except GraphError as error:  # e.g. c no longer read; never a cycle
            assert "cycle" not in str(error)
            continue
        right = mutation.graph.node("c'").inputs[1]  # c' = L op R, R an ancestor of A
        assert right not in forbidden
        if mutation.description.endswith(" (A = h')"):
            operands_from_h.add(right)
    assert operands_from_h  # A = h' was drawn, and gave an admissible ancestor


def test_constant_state_outputs_are_refused():
    # h' = tanh(W_xh x + W_hh h + b_h) replaced by its ancestor b_h would carry nothing.
    bias = next(node.param for node in TANH.nodes if node.op == "bias")  # named by its text
    messages = set()
    for seed in range(100):
        try:
            transform(TANH, "replace_with_ancestor", "h'", random.Random(seed))
        except GraphError as error:
            messages.add(str(error))
    assert f"replace h' by its ancestor {bias}: a state output would depend on neither x nor a " \
        "state" in messages


def test_descriptions_name_the_parents_nodes_as_its_equations_write_them():
    lstm = zoo.get("lstm")
    gate = lstm.node("i").inputs[0]  # W_xi x + W_hi h + b_i, anonymous
    ancestor = transform_until(lstm, "replace_with_ancestor", gate, "by its ancestor x")
    assert ancestor.description == "replace [W_xi x + W_hi h + b_i] by its ancestor x"
    removed = transform(lstm, "remove_node", lstm.node("h'").inputs[0], random.Random(0))
    assert removed.description == "remove tanh(c')"
    named = transform(lstm, "remove_node", "o", random.Random(0))
    assert named.description == "remove o = sigm(W_xo x + W_ho h + b_o)"


def test_nodes_a_mutation_makes_are_described_by_their_expressions():
    made = re.compile(r"(?<![\w])_m\d")  # a fresh node's id; `W_m1` is a parameter's name
    descriptions = [mutate(zoo.get(name), random.Random(seed)).description
                    for name in ("lstm", "gru", "mut1") for seed in range(150)]
    assert not [d for d in descriptions if made.search(d)]
    assert not [d for d in descriptions if d.count("(") != d.count(")")]
    assert any("between tanh(" in d or "by tanh(" in d for d in descriptions)


def test_a_made_node_is_written_as_the_equations_would_write_it():
    from cellsearch.cells.mutate import _Draft

    lstm = zoo.get("lstm")
    draft = _Draft(lstm)
    made = draft.activation("tanh", lstm.node("h'").inputs[0])  # over tanh(c')
    assert draft.label(made) == "tanh(tanh(c'))"
    assert draft.label(draft.activation(1.1, made)) == "[W_m1 tanh(tanh(c')) + b_m1]"


def test_transform_reports_unknown_kinds():
    with pytest.raises(GraphError, match="unknown transformation"):
        transform(TANH, "swap", "h'", random.Random(0))
