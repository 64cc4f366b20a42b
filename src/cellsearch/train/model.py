"""The paper's model for K members at once: input embedding (one-hot tasks) or linear projection
(music) to the hidden size, L layers of the compiled cell, and a softmax or sigmoid output layer.

Every parameter carries a leading population dimension K; member k is an independent model with
its own initialization scale and seed (§3.7) and its own dropout rate. Dropout follows Zaremba et
al. (2014): on the non-recurrent connections only (the embedding's output, between layers, and
before the output layer).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import nn

from cellsearch.cells.graph import CellGraph
from cellsearch.engine.kernels import fused
from cellsearch.engine.mixed import Layer, form_products, run_mixed
from cellsearch.engine.nn import PopulationCell, State, initial_values, uniform
from cellsearch.engine.plan import compiled_step, run
from cellsearch.engine.products import Product
from cellsearch.evaluation.options import (
    ENGINES,  # the engines, listed where torch is not needed
)


def default_engine(device: torch.device) -> str:
    """Generated fused kernels on CUDA when they work there; the eager step otherwise (CPU)."""
    return "fused" if device.type == "cuda" and fused.usable(str(device)) else "eager"


def _runner(engine: str):
    """How an engine runs a layer over a window: eager ops, generated kernels, or torch.compile
    (see `nn.PopulationCell.runner`)."""
    if engine == "eager":
        return run
    if engine == "fused":
        return fused.run_fused
    if engine == "compiled":
        return functools.partial(run, step=compiled_step())
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def input_kind(task) -> str:
    """How a task's inputs reach the first layer: token ids through an embedding (softmax tasks)
    or 88-dim frames through a linear projection with a bias (music)."""
    return "embedding" if task.output_kind == "softmax" else "linear"


class PopulationModel(nn.Module):
    def __init__(
        self,
        graph: CellGraph,
        population_size: int,
        input_size: int,
        output_size: int,
        hidden_size: int,
        num_layers: int,
        input_kind: str,  # "embedding" (token ids) or "linear" (88-dim frames)
        engine: str = "eager",  # see ENGINES
    ):
        super().__init__()
        K, n = population_size, hidden_size
        self.graph = graph
        self.population_size, self.hidden_size = K, n
        self.input_kind, self.engine = input_kind, engine
        self.input_weight = nn.Parameter(torch.empty(K, input_size, n))  # (K, V_in, n)
        self.input_bias = nn.Parameter(torch.empty(K, n)) if input_kind == "linear" else None
        self.layers = nn.ModuleList(PopulationCell(graph, K, n) for _ in range(num_layers))
        for layer in self.layers:
            layer.runner = _runner(engine)
        self.output_weight = nn.Parameter(torch.empty(K, n, output_size))  # (K, n, V_out)
        self.output_bias = nn.Parameter(torch.empty(K, output_size))

    def reset_parameters(self, init_scales: Sequence[float], seeds: Sequence[int]) -> None:
        """Member k: U[-a, a] with a = init_scales[k] / sqrt(hidden) everywhere (§3.7), drawn from
        one generator seeded with seeds[k], so the member does not depend on the others."""
        n = self.hidden_size
        with torch.no_grad():
            for k, (scale, seed) in enumerate(zip(init_scales, seeds, strict=True)):
                generator = torch.Generator().manual_seed(seed)
                bound = scale / math.sqrt(n)
                self.input_weight[k].copy_(uniform(self.input_weight.shape[1:], bound, generator))
                if self.input_bias is not None:
                    self.input_bias[k].copy_(uniform((n,), bound, generator))
                for layer in self.layers:
                    for name, value in initial_values(self.graph, n, scale, generator).items():
                        getattr(layer, name)[k].copy_(value)
                self.output_weight[k].copy_(uniform(self.output_weight.shape[1:], bound, generator))
                self.output_bias[k].copy_(uniform(self.output_bias.shape[1:], bound, generator))

    def initial_state(self, batch_size: int) -> list[State]:
        return [layer.initial_state(batch_size) for layer in self.layers]

    def forward(
        self,
        inputs: torch.Tensor,
        state: list[State],
        dropout: Dropout | None = None,
        add_output_bias: bool = True,
    ) -> tuple[torch.Tensor, list[State]]:
        """inputs (T, B) token ids or (T, B, V_in) frames; state per layer; dropout or None.
        Returns logits (T, K, B, V_out), without the output layer's bias unless `add_output_bias`
        (a loss that adds it itself saves a pass over the logits), and the final state per
        layer."""
        x = self.embed(inputs, dropout)
        new_state = []
        for index, (layer, layer_state) in enumerate(zip(self.layers, state)):
            x, final = layer(x, layer_state)  # (K, T, B, n)
            new_state.append(final)
            x = dropout(x, index + 1) if dropout is not None else x
        return self.output(x, add_output_bias), new_state

    def embed(self, inputs: torch.Tensor, dropout: Dropout | None = None) -> torch.Tensor:
        """The first layer's input, (K, T, B, n), after dropout's first connection."""
        K, n = self.population_size, self.hidden_size
        T, B = inputs.shape[:2]
        if self.input_kind == "embedding":
            x = self.input_weight[:, inputs]  # (K, T, B, n)
        else:
            # One matmul for all members: (T*B, V_in) @ (V_in, K*n)
            flat = inputs.reshape(T * B, -1) @ self.input_weight.transpose(0, 1).reshape(-1, K * n)
            x = flat.view(T, B, K, n).permute(2, 0, 1, 3) + self.input_bias.view(K, 1, 1, n)
        return dropout(x, 0) if dropout is not None else x

    def output(self, x: torch.Tensor, add_output_bias: bool = True) -> torch.Tensor:
        """Logits (T, K, B, V_out) of the top layer's output x (K, T, B, n)."""
        K, T, B, n = x.shape
        x = x.reshape(K, T * B, n)
        logits = (torch.baddbmm(self.output_bias.unsqueeze(1), x, self.output_weight)
                  if add_output_bias else torch.bmm(x, self.output_weight))  # (K, T*B, V_out)
        return logits.view(K, T, B, -1).transpose(0, 1)


def forward_together(
    models: Sequence[PopulationModel],
    inputs: Sequence[torch.Tensor],
    states: Sequence[list[State]],
    dropouts: Sequence[Dropout | None],
    add_output_bias: Sequence[bool],
    layouts: dict | None = None,
    resets: Sequence[torch.Tensor] | None = None,
    products_kernel: str | None = None,
    tables: dict | None = None,
) -> list[tuple[torch.Tensor, list[State]]]:
    """What each model's `forward` returns, with the layers of all models at each depth run
    together by the mixed engine (`engine.mixed`): different cells and hidden sizes in the same
    launches, and so their static parts and output layers (`mixed.form_products`, with
    `products_kernel`; a captured caller keeps the kernel's `tables` there).
    The models share the window's shape (T, B); `layouts` as `mixed.run_mixed`'s. With `resets`
    (each (B,) bool), `states` are the states carried from the last window: the rows a reset
    marks start from zero, and each final state is written back into them (`mixed.Layer`)."""
    xs = [model.embed(x, dropout) for model, x, dropout in zip(models, inputs, dropouts)]
    finals: list[list[State]] = [[] for _ in models]
    for depth in range(max(len(model.layers) for model in models)):
        here = [i for i, model in enumerate(models) if depth < len(model.layers)]
        results = run_mixed([
            Layer(models[i].layers[depth].plan, models[i].layers[depth].population_parameters(),
                  xs[i], states[i][depth], resets[i] if resets is not None else None)
            for i in here], layouts=layouts, products_kernel=products_kernel, tables=tables,
            site=depth)
        for i, (outputs, final) in zip(here, results):
            xs[i] = dropouts[i](outputs, depth + 1) if dropouts[i] is not None else outputs
            finals[i].append(final)
    T, B = xs[0].shape[1:3]
    logits = form_products(
        [Product(x.reshape(x.shape[0], T * B, -1), [model.output_weight],
                 [model.output_bias if bias else None])
         for model, x, bias in zip(models, xs, add_output_bias)],
        products_kernel, tables, "output")
    return [(value.view(value.shape[0], T, B, -1).transpose(0, 1), final)
            for value, final in zip(logits, finals)]


class Dropout:
    """Inverted dropout with a rate per member, its masks a function of (member seed, window,
    connection, position) only: reproducible, the same for a member whatever population it is
    in, and safe to capture in a CUDA graph (no generator state; the window counter is a device
    tensor that the training step advances)."""

    def __init__(self, rates: torch.Tensor, seeds: torch.Tensor):
        self.rates = rates  # (K,)
        self.seeds = seeds.to(torch.int64) & _MASK32  # (K,)
        self.window = torch.zeros((), dtype=torch.int64, device=rates.device)

    def __call__(self, x: torch.Tensor, site: int) -> torch.Tensor:
        K = x.shape[0]
        shape = (K, *([1] * (x.dim() - 1)))
        position = torch.arange(x[0].numel(), device=x.device).view(1, *x.shape[1:])
        key = position + (self.window * 16 + site) * x[0].numel()
        noise = _mix32(key ^ (self.seeds.view(shape) * 0x9E3779B1 & _MASK32))
        keep = (1 - self.rates).view(shape)
        return x * (noise < keep * 2**32).to(x.dtype) / keep


_MASK32 = 0xFFFFFFFF


def _mix32(key: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors: well-mixed 32-bit values."""
    key = key & _MASK32
    key = key ^ (key >> 16)
    key = (key * 0x85EBCA6B) & _MASK32
    key = key ^ (key >> 13)
    key = (key * 0xC2B2AE35) & _MASK32
    return key ^ (key >> 16)
