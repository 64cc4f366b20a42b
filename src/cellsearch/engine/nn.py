"""PyTorch modules for compiled cells: `Cell` and `RNN` for one model, `PopulationCell` for K
independent models trained at once. All of them run the same engine (`cellsearch.engine.plan`);
the single-model modules are its K = 1 case.

Parameters are named as in the equations (`W_xi`, `b_i`). A matrix is (hidden, hidden) and maps
`v` to `v @ W.T`; a bias is (hidden,). Population parameters carry a leading K dimension.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from cellsearch.cells.graph import CellGraph
from cellsearch.engine.plan import plan, run

State = tuple[torch.Tensor, ...]


def uniform(shape, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    """U[-bound, bound] on the CPU (so a seed gives the same values on every device)."""
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def initial_values(
    graph: CellGraph,
    hidden_size: int,
    init_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Starting values of one model's parameters (§3.7): uniform in [-a, a] with
    a = init_scale / sqrt(hidden_size), plus each matrix's diagonal offset (`Linear(a, .)`) and
    each bias's offset (1 for LSTM-b's forget gate) added to that draw. Drawn from `generator` in the
    graph's parameter order, so a model and a population member seeded alike match."""
    bound = init_scale / math.sqrt(hidden_size)
    values = {}
    for node in graph.parameters:
        value = uniform(parameter_shape(node, hidden_size), bound, generator)
        if node.init:
            value += torch.eye(hidden_size) * node.init if node.op == "matmul" else node.init
        values[node.param] = value
    return values


def parameter_shape(node, hidden_size: int) -> tuple[int, ...]:
    """A matrix node's (n, n) weight or a bias node's (n,) vector."""
    return (hidden_size, hidden_size) if node.op == "matmul" else (hidden_size,)


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


class Cell(nn.Module):
    """One step of a cell: `cell(x, state) -> state`, with x and each state (batch, hidden)."""

    def __init__(self, graph: CellGraph, hidden_size: int):
        super().__init__()
        self.graph = graph
        self.hidden_size = hidden_size
        self.plan = plan(graph)
        for node in graph.parameters:
            shape = parameter_shape(node, hidden_size)
            self.register_parameter(node.param, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self, init_scale: float | None = None, seed: int | None = None) -> None:
        """PyTorch's default range 1/sqrt(hidden) unless `init_scale` is given (§3.7)."""
        values = initial_values(self.graph, self.hidden_size, init_scale or 1.0, _generator(seed))
        with torch.no_grad():
            for name, value in values.items():
                getattr(self, name).copy_(value)

    def population_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters as a population of one: (1, ...) views."""
        return {node.param: getattr(self, node.param).unsqueeze(0) for node in self.graph.parameters}

    def initial_state(self, batch_size: int) -> State:
        reference = next(iter(self.parameters()), None)
        zeros = (reference.new_zeros if reference is not None else torch.zeros)
        return tuple(zeros(batch_size, self.hidden_size) for _ in self.graph.states)

    def forward(self, x: torch.Tensor, state: State) -> State:
        # (B, n) -> (K=1, T=1, B, n)
        _, new_state = run(
            self.plan, self.population_parameters(), x[None, None], tuple(s[None] for s in state)
        )
        return tuple(s[0] for s in new_state)


class RNN(nn.Module):
    """A stack of compiled cells over sequences, used like `torch.nn.LSTM`:
    `output, state = rnn(inputs, state)`.

    inputs: (T, B, input_size), or (B, T, input_size) with batch_first. state: one tensor per
    cell state (h first), each (num_layers, B, hidden); zeros when omitted. output: the top
    layer's h at every step. Because cells add `x` to hidden-sized nodes, inputs are first
    projected to the hidden size (`input_projection`, no bias) unless the sizes are equal.
    Dropout, as in torch.nn.LSTM, applies to the outputs of every layer but the last.
    """

    def __init__(
        self,
        graph: CellGraph,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        batch_first: bool = False,
    ):
        super().__init__()
        self.graph = graph
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.batch_first = batch_first
        self.input_projection = (
            nn.Linear(input_size, hidden_size, bias=False) if input_size != hidden_size else None
        )
        self.cells = nn.ModuleList(Cell(graph, hidden_size) for _ in range(num_layers))

    def forward(self, inputs: torch.Tensor, state: State | None = None):
        if self.batch_first:
            inputs = inputs.transpose(0, 1)
        T, B, _ = inputs.shape
        if state is None:
            state = tuple(
                inputs.new_zeros(self.num_layers, B, self.hidden_size) for _ in self.graph.states
            )
        x = self.input_projection(inputs) if self.input_projection is not None else inputs
        x = x.unsqueeze(0)  # (K=1, T, B, n)
        finals = []
        for layer, cell in enumerate(self.cells):
            layer_state = tuple(s[layer].unsqueeze(0) for s in state)
            x, final = run(cell.plan, cell.population_parameters(), x, layer_state)
            finals.append(final)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout)
        output = x[0]  # (T, B, n)
        if self.batch_first:
            output = output.transpose(0, 1)
        new_state = tuple(torch.stack([f[i][0] for f in finals]) for i in range(len(state)))
        return output, new_state


class PopulationCell(nn.Module):
    """K independent copies of a cell (one layer), parameters (K, ...), run over whole sequences:
    `outputs, state = cell(x, state)` with x (K, T, B, hidden) and each state (K, B, hidden)."""

    def __init__(self, graph: CellGraph, population_size: int, hidden_size: int):
        super().__init__()
        self.graph = graph
        self.population_size = population_size
        self.hidden_size = hidden_size
        self.plan = plan(graph)
        for node in graph.parameters:
            shape = parameter_shape(node, hidden_size)
            self.register_parameter(
                node.param, nn.Parameter(torch.empty(population_size, *shape))
            )
        self.reset_parameters([1.0] * population_size, [None] * population_size)
        # (plan, params, x, state) -> (outputs, state): `plan.run`, or an engine's replacement
        self.runner = run

    def reset_parameters(self, init_scales: Sequence[float], seeds: Sequence[int | None]) -> None:
        """Member k starts as `initial_values(graph, hidden, init_scales[k], seeds[k])`."""
        with torch.no_grad():
            for k, (scale, seed) in enumerate(zip(init_scales, seeds, strict=True)):
                values = initial_values(self.graph, self.hidden_size, scale, _generator(seed))
                for name, value in values.items():
                    getattr(self, name)[k].copy_(value)

    def population_parameters(self) -> dict[str, torch.Tensor]:
        return {node.param: getattr(self, node.param) for node in self.graph.parameters}

    def initial_state(self, batch_size: int) -> State:
        reference = next(iter(self.parameters()), None)
        zeros = reference.new_zeros if reference is not None else torch.zeros
        return tuple(
            zeros(self.population_size, batch_size, self.hidden_size) for _ in self.graph.states
        )

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.runner(self.plan, self.population_parameters(), x, state)
