"""Parameter counts and the budget -> hidden size binary search (§3.7)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellsearch.errors import UserError
from cellsearch.evaluation.budget import hidden_size_for_budget, parameter_count

# (matrices, biases) per layer of the zoo cells, counted from their equations.
LSTM = dict(matrices_per_layer=8, biases_per_layer=4)
GRU = dict(matrices_per_layer=6, biases_per_layer=3)
TANH = dict(matrices_per_layer=2, biases_per_layer=1)


def test_lstm_two_layers_with_embedding():
    # input 40*10 = 400; cells 2 * (8*100 + 4*10) = 1680; output 10*40 + 40 = 440
    count = parameter_count(10, **LSTM, num_layers=2, input_size=40, output_size=40, input_kind="embedding")
    assert count == 2520


def test_gru_one_layer_with_linear_input():
    # input 88*5 + 5 = 445; cell 6*25 + 3*5 = 165; output 5*88 + 88 = 528
    count = parameter_count(5, **GRU, num_layers=1, input_size=88, output_size=88, input_kind="linear")
    assert count == 1138


def test_tanh_three_layers():
    # input 26*3 = 78; cells 3 * (2*9 + 3) = 63; output 3*26 + 26 = 104
    count = parameter_count(3, **TANH, num_layers=3, input_size=26, output_size=26, input_kind="embedding")
    assert count == 245


def test_lstm_arith_250k_budget():
    # count(n) = 40n + (8n^2 + 4n) + (40n + 40) = 8n^2 + 84n + 40:
    # n = 171 gives 248_332 <= 250_000 < 251_160 for n = 172.
    shape = dict(**LSTM, num_layers=1, input_size=40, output_size=40, input_kind="embedding")
    assert hidden_size_for_budget(250_000, **shape) == 171
    assert parameter_count(171, **shape) == 248_332
    assert parameter_count(172, **shape) == 251_160


def test_budget_equal_to_a_count_is_feasible():
    shape = dict(**GRU, num_layers=2, input_size=10_000, output_size=10_000, input_kind="embedding")
    exact = parameter_count(200, **shape)
    assert hidden_size_for_budget(exact, **shape) == 200
    assert hidden_size_for_budget(exact - 1, **shape) == 199


def test_budget_too_small_names_the_minimum():
    shape = dict(**LSTM, num_layers=1, input_size=40, output_size=40, input_kind="embedding")
    minimum = parameter_count(1, **shape)  # 40 + 12 + 80 = 132
    assert minimum == 132
    assert hidden_size_for_budget(132, **shape) == 1
    with pytest.raises(UserError, match="num_parameters >= 132"):
        hidden_size_for_budget(131, **shape)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(input_kind="onehot"), "input_kind"),
        (dict(num_layers=0), "num_layers"),
        (dict(output_size=0), "output_size"),
        (dict(matrices_per_layer=-1), "matrices_per_layer"),
        (dict(num_layers=True), "num_layers"),
    ],
)
def test_bad_shapes_are_user_errors(change, message):
    shape = dict(**LSTM, num_layers=1, input_size=40, output_size=40, input_kind="embedding") | change
    with pytest.raises(UserError, match=message):
        hidden_size_for_budget(10_000, **shape)


shapes = st.fixed_dictionaries(
    dict(
        matrices_per_layer=st.integers(0, 12),
        biases_per_layer=st.integers(0, 6),
        num_layers=st.integers(1, 4),
        input_size=st.integers(1, 10_000),
        output_size=st.integers(1, 10_000),
        input_kind=st.sampled_from(["embedding", "linear"]),
    )
)


@given(shape=shapes, hidden_size=st.integers(1, 5_000))
def test_count_grows_strictly_with_hidden_size(shape, hidden_size):
    assert parameter_count(hidden_size, **shape) < parameter_count(hidden_size + 1, **shape)


@given(shape=shapes, budget=st.integers(1, 30_000_000))
def test_result_is_the_largest_feasible_hidden_size(shape, budget):
    if parameter_count(1, **shape) > budget:
        with pytest.raises(UserError):
            hidden_size_for_budget(budget, **shape)
        return
    hidden_size = hidden_size_for_budget(budget, **shape)
    assert parameter_count(hidden_size, **shape) <= budget < parameter_count(hidden_size + 1, **shape)


@given(shape=shapes, budget=st.integers(50_000, 5_000_000), extra=st.integers(0, 5_000_000))
def test_larger_budget_never_gives_a_smaller_model(shape, budget, extra):
    if parameter_count(1, **shape) > budget:
        return
    assert hidden_size_for_budget(budget, **shape) <= hidden_size_for_budget(budget + extra, **shape)
