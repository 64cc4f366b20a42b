import pytest

from cellsearch.cells import zoo
from cellsearch.cells.equations import EquationError, format_graph, parse


def test_lstm_reads_like_the_paper():
    text = zoo.source("lstm")
    assert "i  = tanh(W_xi x + W_hi h + b_i)" in text
    assert "c' = c * f + i * j" in text
    assert "h' = tanh(c') * o" in text
    assert format_graph(zoo.get("lstm")) in text  # the printer writes the file back verbatim


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_round_trips_through_text(name):
    graph = zoo.get(name)
    assert parse(format_graph(graph)) == graph


def test_structure_of_the_parsed_gru():
    graph = zoo.get("gru")
    candidate = graph.node("h~")
    assert candidate.op == "tanh"
    # W_hh applies to r * h (§2.3)
    (w_hh,) = [n for n in graph.nodes if n.param == "W_hh"]
    assert graph.node(w_hh.inputs[0]).op == "mul"
    assert set(graph.node(w_hh.inputs[0]).inputs) == {"r", "h"}


def test_mut1_adds_tanh_x_without_a_matrix():
    graph = zoo.get("mut1")
    tanh_of_x = [n for n in graph.nodes if n.op == "tanh" and n.inputs == ("x",)]
    assert len(tanh_of_x) == 1
    assert graph.num_matrices == 4


def test_mut2_reads_x_inside_r_without_a_matrix():
    graph = zoo.get("mut2")
    outer = graph.node(graph.node("r").inputs[0])  # (x + W_hr h) + b_r
    inner = graph.node(outer.inputs[0])
    assert inner.op == "add" and inner.inputs[0] == "x"


def test_continuation_lines_and_unicode_product():
    one_line = parse("z = sigm(W_xz x + b_z)\nh' = tanh(W_hh h) ⊙ z + h * (1 - z)")
    two_lines = parse("z = sigm(W_xz x + b_z)\nh' = tanh(W_hh h) * z\n   + h * (1 - z)\n")
    assert one_line == two_lines


def test_init_values():
    graph = parse("h' = tanh(W_hh h + W_xh x + b_h)\ninit W_hh = 1.1\ninit b_h = -0.5")
    by_param = {n.param: n.init for n in graph.parameters}
    assert by_param == {"W_hh": 1.1, "W_xh": 0.0, "b_h": -0.5}
    assert "init W_hh = 1.1" in format_graph(graph)


def test_precedence_and_parentheses_are_kept():
    graph = parse("h' = x - (h - W_a x) * b_q")
    assert parse(format_graph(graph)) == graph
    assert format_graph(graph).strip() == "h' = x - (h - W_a x) * b_q"


@pytest.mark.parametrize(
    "text, message",
    [
        ("h' = tanh(W_xh x + )", "line 1, column 20: expected a name"),
        ("i = tanh(x\nh' = i + h", "line 1, column 11: expected ')'"),
        ("h' = x + h $", "line 1, column 12: unexpected character '$'"),
        ("h' = x + h\nh' = x * h", "line 2, column 1: h' is already defined on line 1"),
        ("h' = x + 2 * h", "the only constant is 1"),
        ("h' = x + h\ninit b_q = 1", "line 2, column 6: init names b_q, which no equation uses"),
        ("h' = x + h q", "line 1, column 12: expected an operator"),
        ("q = tanh(x)\nh' = x + h", "line 1, column 1: node(s) 'q' are never used"),
        ("h' = x + c", "line 1, column 10: c is not defined; a state c needs its new value c' defined"),
        ("h' = tanh(W_xh x + W_hh foo)", "line 1, column 25: foo is not defined"),
        ("z = sigm(x)\nh' = z * q' + h", "line 2, column 10: q' is not defined"),
        ("W_q = x + h", "expected the name of the node being defined"),
        ("x = h\nh' = x + h", "x is the input"),
    ],
)
def test_errors_name_line_and_column(text, message):
    with pytest.raises(EquationError) as error:
        parse(text)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and "_#" not in str(error.value)  # the user's names
