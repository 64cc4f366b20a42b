"""Every zoo cell, compiled, against an independent plain-PyTorch transcription of the paper."""

import pytest
import torch

from cellsearch.cells import zoo
from cellsearch.nn import RNN, Cell, PopulationCell

from .reference_cells import REFERENCES

HIDDEN, BATCH, STEPS = 6, 4, 5


def run_reference(name, params, xs, state):
    outputs = []
    for x in xs:
        state = REFERENCES[name](params, x, *state)
        outputs.append(state[0])
    return torch.stack(outputs), state


@pytest.mark.parametrize("name", zoo.names())
def test_cell_matches_reference_values_and_gradients(name):
    torch.manual_seed(0)
    cell = Cell(zoo.get(name), HIDDEN).double()
    cell.reset_parameters(init_scale=2.0, seed=1)  # large enough that every gate matters
    xs = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.double)
    initial = tuple(torch.randn(BATCH, HIDDEN, dtype=torch.double) for _ in cell.graph.states)
    readout = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.double)

    state, outputs = initial, []
    for x in xs:
        state = cell(x, state)
        outputs.append(state[0])
    compiled = torch.stack(outputs)
    ((compiled * readout).sum() + state[-1].sum()).backward()

    params = {n: p.detach().clone().requires_grad_() for n, p in cell.named_parameters()}
    expected, expected_state = run_reference(name, params, xs, initial)
    ((expected * readout).sum() + expected_state[-1].sum()).backward()

    torch.testing.assert_close(compiled, expected)
    for a, b in zip(state, expected_state):
        torch.testing.assert_close(a, b)
    assert set(params) == {n for n, _ in cell.named_parameters()}
    for n, p in cell.named_parameters():
        torch.testing.assert_close(p.grad, params[n].grad, msg=f"gradient of {n}")
        assert params[n].grad.abs().sum() > 0, f"{n} gets no gradient"


@pytest.mark.parametrize("name", zoo.names())
def test_rnn_over_a_sequence_matches_reference(name):
    torch.manual_seed(0)
    rnn = RNN(zoo.get(name), HIDDEN, HIDDEN).double()
    for cell in rnn.cells:
        cell.reset_parameters(init_scale=2.0, seed=3)
    xs = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.double)
    output, state = rnn(xs)
    params = dict(rnn.cells[0].named_parameters())
    zeros = tuple(torch.zeros(BATCH, HIDDEN, dtype=torch.double) for _ in state)
    expected, expected_state = run_reference(name, params, xs, zeros)
    torch.testing.assert_close(output, expected)
    for a, b in zip(state, expected_state):
        torch.testing.assert_close(a[0], b)


@pytest.mark.parametrize("name", zoo.names())
def test_population_of_three_equals_three_cells(name):
    graph = zoo.get(name)
    seeds, scales = [4, 5, 6], [0.7, 1.4, 2.8]
    population = PopulationCell(graph, 3, HIDDEN).double()
    population.reset_parameters(scales, seeds)
    xs = torch.randn(3, STEPS, BATCH, HIDDEN, dtype=torch.double)  # a different input per member
    outputs, final = population(xs, population.initial_state(BATCH))
    outputs.sum().backward()
    for k in range(3):
        cell = Cell(graph, HIDDEN).double()
        cell.reset_parameters(init_scale=scales[k], seed=seeds[k])
        state, steps = cell.initial_state(BATCH), []
        for x in xs[k]:
            state = cell(x, state)
            steps.append(state[0])
        torch.stack(steps).sum().backward()
        torch.testing.assert_close(outputs[k], torch.stack(steps))
        for a, b in zip(final, state):
            torch.testing.assert_close(a[k], b)
        for n, p in cell.named_parameters():
            torch.testing.assert_close(getattr(population, n).grad[k], p.grad)


def test_parameters_are_named_as_in_the_equations():
    cell = Cell(zoo.get("lstm"), 7)
    shapes = {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert shapes == {
        **{f"W_{a}{g}": (7, 7) for a in "xh" for g in "ijfo"},
        **{f"b_{g}": (7,) for g in "ijfo"},
    }


def test_lstm_b_forget_bias_starts_at_one():
    cell = Cell(zoo.get("lstm-b"), 50)
    cell.reset_parameters(init_scale=0.3, seed=0)
    bound = 0.3 / 50**0.5
    assert (cell.b_f - 1).abs().max() <= bound + 1e-6
    assert cell.b_i.abs().max() <= bound + 1e-6


def test_initial_state_is_zeros_h_first():
    cell = Cell(zoo.get("lstm"), 3)
    state = cell.initial_state(2)
    assert len(state) == 2 and all(s.shape == (2, 3) and not s.any() for s in state)
    assert cell.graph.states == ("h", "c")


def test_rnn_batch_first_and_projection():
    torch.manual_seed(0)
    rnn = RNN(zoo.get("gru"), 3, 5, num_layers=2, batch_first=True)
    inputs = torch.randn(4, 6, 3)
    output, (h,) = rnn(inputs)
    assert output.shape == (4, 6, 5) and h.shape == (2, 4, 5)
    torch.testing.assert_close(output[:, -1], h[-1])
    # continuing from a state equals running the whole sequence at once
    first, state = rnn(inputs[:, :2])
    second, _ = rnn(inputs[:, 2:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), output)


@pytest.mark.parametrize("text", [
    # a matrix applied to a bias or to 1 is constant over time, read directly and inside a sum
    "h' = tanh(W_hh h) * W_c b_c + W_xh x",
    "z = sigm(W_hz h + W_o 1)\nh' = z * h + (1 - z) * tanh(W_xh x)",
    # a state output that depends on biases alone
    "h' = id(b_i)\nc' = c + h + x",
])
def test_sequence_engine_equals_stepping_one_cell(text):
    from cellsearch.cells.equations import parse

    torch.manual_seed(0)
    graph = parse(text)
    rnn = RNN(graph, HIDDEN, HIDDEN).double()
    rnn.cells[0].reset_parameters(init_scale=2.0, seed=5)
    xs = torch.randn(STEPS, BATCH, HIDDEN, dtype=torch.double)
    output, _ = rnn(xs)  # the whole sequence at once: static values for all T
    cell, state, steps = rnn.cells[0], rnn.cells[0].initial_state(BATCH), []
    for x in xs:  # one step at a time
        state = cell(x.double(), tuple(s.double() for s in state))
        steps.append(state[0])
    torch.testing.assert_close(output, torch.stack(steps))
