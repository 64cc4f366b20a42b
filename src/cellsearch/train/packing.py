"""How many members fit in one population on a GPU: an estimate of one member's memory during a
training step, against the device's free memory.

The estimate is deliberately generous (CUDA-graph pools, the allocator's rounding): a population
that does not fit fails as a whole, which costs more than training two smaller ones.
"""

from __future__ import annotations

import torch

from cellsearch.cells.graph import CellGraph

FLOAT_BYTES = 4
FREE_MEMORY_FRACTION = 0.5  # leave room for the allocator's caching and other processes


def member_bytes(graph: CellGraph, parameters: int, hidden_size: int, num_layers: int,
                 output_size: int, batch_size: int = 20, num_steps: int = 35) -> int:
    """Bytes one member needs in a training step: its parameters (weights, gradients, the
    concatenated recurrent matrices), the values autograd keeps for every node at every step,
    and the logits with their gradient."""
    parameter_bytes = 3 * parameters * FLOAT_BYTES
    values_per_step = (len(graph.nodes) + len(graph.states) + 1) * batch_size * hidden_size
    activation_bytes = 2 * num_layers * num_steps * values_per_step * FLOAT_BYTES
    logit_bytes = 3 * num_steps * batch_size * output_size * FLOAT_BYTES
    return parameter_bytes + activation_bytes + logit_bytes


def population_limit(graph: CellGraph, parameters: int, hidden_size: int, num_layers: int,
                     output_size: int, device: torch.device) -> int | None:
    """The most members that fit on `device` now, or None (no limit) off CUDA."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    one = member_bytes(graph, parameters, hidden_size, num_layers, output_size)
    return max(1, int(free * FREE_MEMORY_FRACTION) // one)
