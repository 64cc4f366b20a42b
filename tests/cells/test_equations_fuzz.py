"""Any text given as a cell is a graph or a UserError (with its line and column where it is a
syntax error), never another exception; every graph the parser accepts prints back to itself."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph, parse
from cellsearch.errors import UserError

TOKENS = ["h", "c", "x", "h'", "c'", "W_a", "W_b", "b_a", "tanh", "sigm", "relu", "id", "1", "2",
          "(", ")", "+", "-", "*", "=", "\n", " ", "init", "_1", "#", "⊙", "0.5"]


def parsed_or_user_error(text: str) -> None:
    try:
        graph = parse(text)
    except UserError:
        return
    assert parse(format_graph(graph)) == graph


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_soup(text):
    parsed_or_user_error(text)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(zoo.names()),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.sampled_from(TOKENS)),
             max_size=4),
)
def test_mutated_zoo_texts(name, edits):
    text = zoo.source(name)
    for position, removed, inserted in edits:
        position %= len(text) + 1
        text = text[:position] + inserted + text[position + removed:]
    parsed_or_user_error(text)


@settings(max_examples=50, deadline=None)
@given(st.integers(150, 3000), st.sampled_from(["tanh({})", "({})", "W_a {}", "sigm(W_b {})"]),
       st.integers(150, 3000))
def test_deep_nesting_and_long_sums(depth, wrapper, terms):
    nested = "h"
    for _ in range(depth):
        nested = wrapper.format(nested)
    parsed_or_user_error(f"h' = x + {nested}")
    parsed_or_user_error("h' = x + " + " + ".join(f"W_{i} h" for i in range(terms)))
