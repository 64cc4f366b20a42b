"""Layers of *different* cells, each its own population and hidden size, run over a window
together: every launch of a step serves all members of all cells.

A search trains thousands of different cells a few settings each (K of 1 to 5 per shape), and
one such population leaves a GPU nearly idle: its kernels are small, and separate populations'
kernels queue one after another (processes time-slice; threads with streams break CUDA-graph
capture). Generating one kernel per *combination* of cells would compile anew whenever a
setting finishes. Instead the elementwise part of every cell is data for one fixed kernel:

- Each cell's step (its `plan.loop`) is compiled into a `Program`: the step's values live in
  numbered slots, every activation, sum and product is an `(op, dst, a, b)` instruction on slots,
  and the step is cut into stages wherever a matrix multiplies a value formed in the same step
  (an LSTM has one stage, a GRU two).
- All members' slots over the window form one tensor (T + 1, R, M, B, N): per step R slots of M
  members of all cells, B rows, N the largest hidden size (a member's columns past its own size
  stay 0). Slot-major, so slot R + r of a step is slot r of the next: a step's last
  instructions copy its new states there, and no step needs a launch of its own for that.
- Per step and stage, one kernel forms every member's recurrent products, reading the operands
  from their slots and writing the products to theirs (each member loops over its own
  matrices), then runs every member's instructions, looping over its own program: a program
  per member and tile of its slot, as instructions are elementwise (`kernels.mixed`, generated
  from the operation table through `instructions`). Backward runs them in reverse, a stage's
  matmuls with the stage before's instructions, and forms each matrix's gradient once per
  window from all steps' operands and product gradients. On a CPU the same work runs as torch
  operations (`TorchKernels`).

So a step of any mix of cells launches one kernel per stage forward and one backward, whatever
the cells, and no combination is ever compiled. Or the whole window runs in one launch each way
(`PersistentKernels`, with `CUDA_KERNEL` "persistent"): a program per member and block of rows
loops over the steps and stages itself, as rows and members never meet. Before the window, what
the layers compute from their inputs alone (their matrices applied to all steps at once) is
formed for all of them together too (`form_products`: one launch a round on a GPU), and their
tensors enter and leave the window in one launch each (`kernels.copies`). The whole window is
one autograd node (`_Window`). The values and gradients are the eager engine's (`plan.run`) to
float rounding. Every slot is written once a step, but for a sum's running total (only `add` and
`sub`, whose derivatives read no values), so the backward reads every value it needs from the
forward's.

Its speed on a GPU is not measured yet (`cellsearch bench --mixed N`). What it costs beyond the
arithmetic: the window's slots and their gradients (zeroed once a window, kept for backward),
and instructions whose values pass through memory (L1/L2) rather than registers.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from cellsearch.cells import ops
from cellsearch.engine.instructions import OPCODES, gradients
from cellsearch.engine.kernels.copies import Copies
from cellsearch.engine.kernels.mixed import (
    PersistentKernels,
    Stacked,
    StepByStep,
    TritonKernels,
    stacked,
)
from cellsearch.engine.kernels.tables import Table
from cellsearch.engine.nn import State, parameter_shape
from cellsearch.engine.plan import (
    MatmulGroup,
    Plan,
    Sum,
    answer_requests,
    plan,
    pre_name,
    run,
    static_products,
    static_requests,
    static_sum_name,
    step_inputs,
)
from cellsearch.engine.products import Product, in_torch

ZERO = 0  # slot 0 holds zeros: the second operand of an activation, the start of a negated sum


@dataclass(frozen=True)
class Stage:
    """Matmuls first — `(operand slot, matrix, product slot)`, the matrix named by its group's
    operand and its chunk in that group — then `instructions`, `(opcode, dst, a, b)` in order."""

    matmuls: tuple[tuple[int, tuple[str, int], int], ...]
    instructions: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class Program:
    """One cell's step on slots. States occupy slots 1.. in the graph's order, the step inputs
    (`step_inputs`' names, a wide input one slot per chunk) `input_base`.., then every value
    the step forms; `outputs` are the new states' slots (h first)."""

    inputs: tuple[tuple[str, int], ...]  # slot input_base + i holds chunk c of input name
    stages: tuple[Stage, ...]
    outputs: tuple[int, ...]
    slots: int


@functools.lru_cache(maxsize=512)  # bounded: a long search meets thousands of graphs
def compile_program(plan_: Plan, input_base: int, inputs: tuple[tuple[str, int], ...]) -> Program:
    """`plan_.loop` as slot instructions, with the step inputs (name, chunk) at `input_base`..
    (every member of a mix puts its states and inputs at the same slots)."""
    graph = plan_.graph
    slot: dict[str, int] = {name: 1 + i for i, name in enumerate(graph.states)}
    stage_of: dict[str, int] = dict.fromkeys(slot, 0)
    chunk_slot = {key: input_base + i for i, key in enumerate(inputs)}
    for (name, chunk), index in chunk_slot.items():
        if chunk == 0:
            slot[name], stage_of[name] = index, 0
    given = set(slot)  # states and step inputs: there before the step's first matmul
    free = input_base + len(inputs)
    matmuls: dict[int, list] = {}
    instructions: dict[int, list] = {}

    def new_slot(name: str, stage: int) -> int:
        nonlocal free
        slot[name], stage_of[name] = free, stage
        free += 1
        return slot[name]

    def emit(stage: int, op: str, dst: int, a: int, b: int = ZERO) -> None:
        instructions.setdefault(stage, []).append((OPCODES[op], dst, a, b))

    for item in plan_.loop:
        if isinstance(item, MatmulGroup):
            # A value formed at stage s is multiplied at stage s + 1; states and inputs at 0.
            operand = item.operand
            stage = 0 if operand in given else stage_of[operand] + 1
            pre = pre_name(operand)
            for chunk, member in enumerate(item.members):
                product = new_slot(member, stage)
                matmuls.setdefault(stage, []).append((slot[operand], (operand, chunk), product))
                if (pre, chunk) in chunk_slot:  # the static addends fused into this product
                    emit(stage, "add", product, product, chunk_slot[pre, chunk])
        elif isinstance(item, Sum):
            terms = item.recurrent_terms
            stage = max(stage_of[name] for _, name in terms)
            dst = new_slot(item.name, stage)
            start = chunk_slot.get((static_sum_name(item.name), 0))
            for sign, name in terms:
                if start is None and sign > 0:  # the first term: a copy, or 0 - t
                    emit(stage, "identity", dst, slot[name])
                else:
                    emit(stage, "add" if sign > 0 else "sub", dst,
                         ZERO if start is None else start, slot[name])
                start = dst
        else:  # an activation or a binary operation on values of this step
            stage = max(stage_of[name] for name in item.inputs)
            dst = new_slot(item.name, stage)
            emit(stage, item.op, dst, *(slot[name] for name in item.inputs))
    count = max([*matmuls, *instructions, 0]) + 1
    return Program(
        inputs=inputs,
        stages=tuple(Stage(tuple(matmuls.get(s, ())), tuple(instructions.get(s, ())))
                     for s in range(count)),
        outputs=tuple(slot[name] for name in graph.outputs),
        slots=free,
    )


@dataclass
class Layer:
    """One population's layer in a mix: its plan, parameters (K, ...), input x (K, T, B, n) and
    state, one (K, B, n) tensor per state.

    With `reset` (B,) bool, `state` is the state carried from the last window: the rows `reset`
    marks start from zero instead, and the final state is written back into `state` (truncated
    backpropagation: no gradient reaches it or flows from it). The window does both as it copies
    the state in and out, so carrying costs no launch of its own."""

    plan: Plan
    params: dict[str, torch.Tensor]
    x: torch.Tensor
    state: State
    reset: torch.Tensor | None = None


def run_mixed(layers: Sequence[Layer], kernel: str | None = None,
              layouts: dict | None = None, products_kernel: str | None = None,
              tables: dict | None = None, site=None) -> list[tuple[torch.Tensor, State]]:
    """Every layer over its window at once; per layer what `plan.run` returns, (outputs (K, T, B,
    n), final state). The layers share T and B; cells, K and n may differ. `kernel`: "triton" or
    "torch" for the step's work (default: Triton on CUDA, torch elsewhere). `layouts`: where
    the mix's integer tables are kept, for a caller that captures this run into a CUDA graph and
    so must keep them alive as long as the graph (default: a bounded cache). The layers' static
    values and parts are formed together before the window, their products a round at a time
    by `form_products(..., products_kernel, tables, (site, ...))`; the window's copies keep
    their tables in `tables` too, at (site, "window")."""
    T, B = layers[0].x.shape[1:3]
    if any(layer.x.shape[1:3] != (T, B) for layer in layers):
        raise ValueError("the layers of a mix share their window: T and B must agree")
    device = layers[0].x.device
    kernel = kernel or (CUDA_KERNEL if device.type == "cuda" else "torch")
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(_KERNELS)}")
    S = max(len(layer.plan.graph.states) for layer in layers)
    statics = answer_requests(
        [static_requests(layer.plan, layer.params, layer.x) for layer in layers],
        lambda products, round_: form_products(products, products_kernel, tables,
                                               (site, round_)))
    wanted = [static_products(layer.plan, layer.params, static)
              for layer, static in zip(layers, statics)]
    formed = iter(form_products([p for mine in wanted for p in mine.values()],
                                products_kernel, tables, (site, "parts")))
    inputs = [step_inputs(layer.plan, layer.params, layer.x, static,
                          {operand: next(formed) for operand in mine})
              for layer, static, mine in zip(layers, statics, wanted)]
    # a wide input (a group's static addends) one slot per chunk; a constant may be (1, 1, 1, 1)
    chunks = [{name: max(value.shape[-1] // layer.x.shape[3], 1) for name, value in mine.items()}
              for layer, mine in zip(layers, inputs)]
    programs = tuple(
        compile_program(layer.plan, 1 + S, tuple((name, c) for name, C in mine.items()
                                                 for c in range(C)))
        for layer, mine in zip(layers, chunks))
    sizes = tuple(layer.x.shape[0] for layer in layers)
    widths = tuple(layer.x.shape[3] for layer in layers)
    key = (programs, sizes, widths, device)  # (the programs place the inputs after S states)
    if layouts is None:
        layout = _cached_layout(*key)
    else:
        if key not in layouts:
            layouts[key] = _layout(*key)
        layout = layouts[key]

    # Every tensor the window reads, and where it goes: states, step inputs, matrices.
    places, tensors = [], []
    for p, (layer, mine, program) in enumerate(zip(layers, inputs, programs)):
        places += [("state", p, 1 + i) for i in range(len(layer.state))]
        tensors += layer.state
        slots = iter(range(1 + S, 1 + S + len(program.inputs)))
        for name, value in mine.items():
            places.append(("input", p, next(slots), chunks[p][name]))
            tensors.append(value)
            for _ in range(chunks[p][name] - 1):
                next(slots)
        matrices = {item.operand: item.params for item in layer.plan.loop
                    if isinstance(item, MatmulGroup)}
        for s, table in enumerate(layout.stages):
            for j, job in enumerate(table.jobs[p]):
                if job is not None:
                    places.append(("matrix", p, s, j))
                    tensors.append(layer.params[matrices[job[0]][job[1]]])
    resets = tuple(layer.reset for layer in layers)
    carried = tuple(layer.state if layer.reset is not None else None for layer in layers)
    kept = None if tables is None else tables.setdefault((site, "window"), _WindowTables())
    results = iter(_Window.apply(layout, _KERNELS[kernel], (T, B), tuple(places), resets,
                                 carried, kept, *tensors))
    return [(next(results), layer.state if layer.reset is not None
             else tuple(itertools.islice(results, len(layer.state))))
            for layer in layers]


PRODUCTS_KERNELS = ("torch", "triton")


def form_products(products: Sequence[Product], kernel: str | None = None,
                  tables: dict | None = None, site=None) -> list[torch.Tensor]:
    """Each product's value, in torch or in one launch of `kernels.products` ("triton"; default
    on CUDA where it works; float32 only, others go to torch). A step captured into a CUDA graph
    keeps the kernel's tables in `tables`, one entry per call `site`."""
    if not products:
        return []
    device = products[0].x.device
    if kernel is None:
        kernel = "triton" if device.type == "cuda" and _products_usable(str(device)) else "torch"
    if kernel not in PRODUCTS_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(PRODUCTS_KERNELS)}")
    if kernel == "torch" or any(p.x.dtype != torch.float32 for p in products):
        return [in_torch(p) for p in products]
    from cellsearch.engine.kernels import products as grouped  # (imports Triton)

    return grouped.together(products, tables, site)


def _products_usable(device: str) -> bool:
    from cellsearch.engine.kernels import products as grouped  # (imports Triton)

    return grouped.usable(device)


class _Window(torch.autograd.Function):
    """A mix over its window: (the states (K, B, n), step inputs (K, T, B, w) or broadcastable,
    and the stages' matrices (K, n, n) of every population, each placed as `places` says) ->
    per population its outputs (K, T, B, n) and final states (K, B, n).

    Forward fills one tensor of slots for the whole window, (T + 1, R, M, B, N), slot-major so
    that slot R + r of a step is slot r of the next: the states and inputs go in once, then per
    step and stage the kernels form the products and run the instructions, the last of which
    copy each member's new states into the next step's state slots. Backward runs the same in
    reverse on one tensor of the slots' gradients, then forms each stage's matrices' gradient
    from all steps at once. So a step launches one kernel per stage each way (`stage`, and
    `stage_backward`: a stage's matmuls' backward with the stage before's instructions'), and
    writes its slots once each way; and the populations' tensors enter the window in one launch
    and leave it in one each way (`kernels.copies`; in torch a copy a tensor), with no padding on
    the way. A population whose state is carried (`resets[p]` not None) has the reset rows
    zeroed on the way in and its final state copied into `carried[p]` on the way out, not
    returned. `tables`: the copies' (`_WindowTables`), or None (an eager call's own)."""

    @staticmethod
    def forward(ctx, layout, kernels, window, places, resets, carried, tables, *tensors):
        (T, B), M, N, R = window, layout.members, layout.width, layout.slots
        tables = tables or _WindowTables()
        # zeros: slot 0, the scratch slot, and the columns past a member's size stay 0
        values = tensors[0].new_zeros(T + 1, R, M, B, N)
        matrices = [values.new_zeros(M, table.J, N, N) for table in layout.stages]
        copies = Copies()
        for place, tensor in zip(places, tensors):
            reset = resets[place[1]] if place[0] == "state" else None
            copies.add(_region(layout, place, values, matrices, T), _arranged(place, tensor),
                       zero_where=None if reset is None else reset.view(1, -1, 1))
        copies.launch(tables.into, in_torch=kernels.copies_in_torch)
        matrices = [m.view(-1, N, N) if table.J else None
                    for m, table in zip(matrices, layout.stages)]
        kernels.forward(values, layout, matrices, tables)
        ctx.save_for_backward(values, *(m for m in matrices if m is not None))
        ctx.layout, ctx.kernels, ctx.places, ctx.carried = layout, kernels, places, carried
        ctx.shapes, ctx.tables = [tensor.shape for tensor in tensors], tables
        copies = Copies()
        for buffers, finals in zip(carried, _finals(layout, values)):
            for buffer, final in zip(buffers or (), finals):
                copies.add(buffer, final)
        results = []
        for region in _results(layout, values, carried):
            results.append(region.new_empty(region.shape))
            copies.add(results[-1], region)
        copies.launch(tables.out, in_torch=kernels.copies_in_torch)
        return tuple(results)

    @staticmethod
    @once_differentiable
    def backward(ctx, *result_grads):
        values, *saved = ctx.saved_tensors
        layout, kernels, places, tables = ctx.layout, ctx.kernels, ctx.places, ctx.tables
        T = values.shape[0] - 1
        grads = torch.zeros_like(values)
        # the outputs' gradients, then the final states' added: the last output is the final h
        outputs, finals = Copies(), Copies()
        for region, grad in zip(_results(layout, grads, ctx.carried), result_grads):
            if region.dim() == 4:
                outputs.add(region, grad)
            else:
                finals.add(region, grad, add=True)
        outputs.launch(tables.grads_in, in_torch=kernels.copies_in_torch)
        finals.launch(tables.finals_in, in_torch=kernels.copies_in_torch)
        saved = iter(saved)
        matrices = [next(saved) if table.J else None for table in layout.stages]
        kernels.backward(grads, values, layout, matrices, tables)
        needed = ctx.needs_input_grad[7:]
        wanted = {place[2] for place, need in zip(places, needed) if need and place[0] == "matrix"}
        matrix_grads = [_matrix_gradient(values, grads, table).view(layout.members, table.J,
                                                                     *weights.shape[1:])
                        if s in wanted else None
                        for s, (table, weights) in enumerate(zip(layout.stages, matrices))]
        copies = Copies()
        results = [_arranged_back(place, _region(layout, place, grads, matrix_grads, T), shape,
                                  copies) if need else None
                   for place, shape, need in zip(places, ctx.shapes, needed)]
        copies.launch(tables.grads_out, in_torch=kernels.copies_in_torch)
        return (None, None, None, None, None, None, None, *results)


def _members(layout, population: int) -> slice:
    start = layout.starts[population]
    return slice(start, start + layout.sizes[population])


def _region(layout, place, values, matrices, T) -> torch.Tensor:
    """Where a placed tensor goes in the window's slots (T + 1, R, M, B, N) or a stage's
    matrices (M, J, N, N), in the layout `_arranged` puts it in."""
    kind, population = place[:2]
    members, n = _members(layout, population), layout.widths[population]
    if kind == "state":
        return values[0, place[2], members, :, :n]  # (K, B, n)
    if kind == "input":
        slot, count = place[2:]
        return values[:T, slot:slot + count, members, :, :n]  # (T, C, K, B, n)
    stage, j = place[2:]
    return matrices[stage][members, j, :n, :n]  # (K, n, n)


def _arranged(place, tensor) -> torch.Tensor:
    """A placed tensor as its region is laid out: a step input (K, T, B, C*n), or broadcastable
    to it, becomes (T, C, K, B, n)."""
    if place[0] != "input":
        return tensor
    K, t, B, width = tensor.shape
    count = place[3]
    return tensor.reshape(K, t, B, count, width // count).permute(1, 3, 0, 2, 4)


def _arranged_back(place, grad, shape, copies: Copies) -> torch.Tensor:
    """A region's gradient in its tensor's shape, summed where the tensor was broadcast; a step
    input's copied there by `copies` (when they launch)."""
    if place[0] != "input":
        return grad
    T, count, K, B, n = grad.shape
    if shape != (K, T, B, count * n):  # broadcast (a constant)
        return grad.permute(2, 0, 3, 1, 4).reshape(K, T, B, count * n).sum_to_size(shape)
    result = grad.new_empty(shape)
    copies.add(result.view(K, T, B, count, n).permute(1, 3, 0, 2, 4), grad)
    return result


@dataclass
class _WindowTables:
    """The tables of a window's copies (`kernels.copies`), one per launch: kept as long as a
    captured step (see `tables.Table`)."""

    into: Table = field(default_factory=Table)
    out: Table = field(default_factory=Table)
    grads_in: Table = field(default_factory=Table)
    finals_in: Table = field(default_factory=Table)
    grads_out: Table = field(default_factory=Table)
    matrices: Table = field(default_factory=Table)  # (`PersistentKernels`: where they are)
    matrices_backward: Table = field(default_factory=Table)


def _results(layout, values, carried) -> list[torch.Tensor]:
    """What the window returns, where it lies: per population its outputs (K, T, B, n), then,
    unless carried, its final states (K, B, n)."""
    results = []
    for population, finals in enumerate(_finals(layout, values)):
        members, n = _members(layout, population), layout.widths[population]
        results.append(values[1:, 1, members, :, :n].transpose(0, 1))
        if carried[population] is None:
            results += finals
    return results


def _finals(layout, values) -> list[list[torch.Tensor]]:
    """Per population, where its final states (K, B, n) lie."""
    T = values.shape[0] - 1
    return [[values[T, 1 + i, _members(layout, population), :, :layout.widths[population]]
             for i in range(states)] for population, states in enumerate(layout.states)]


def _matrix_gradient(values, grads, table) -> torch.Tensor:
    """(M*J, N, N): each matrix's gradient over the whole window, product grads^T @ operands
    (a product is `operand @ W.T`)."""
    steps, B, N = values.shape[0] - 1, *values.shape[3:]
    operands = values[:steps].flatten(1, 2).index_select(1, table.operands)  # (T, M*J, B, N)
    products = grads[:steps].flatten(1, 2).index_select(1, table.products)
    return torch.bmm(products.permute(1, 3, 0, 2).reshape(-1, N, steps * B),
                     operands.transpose(0, 1).reshape(-1, steps * B, N))


@dataclass(frozen=True)
class _StageTable:
    """One stage of a mix as tensors: each member's `J` matmuls as operand and product slots
    (M, J) and counts (M,), and as rows of a step's slots viewed as (R * M, B, N), padded
    (slot 0 times a zero matrix, written to the scratch slot); each population's matrices
    (`jobs`: its group operand and chunk, or None); the instructions (M, L, 4) with counts,
    and on the host each population's own (`code`, unpadded: what `TorchKernels` runs)."""

    J: int
    operand_slots: torch.Tensor  # (M, J)
    product_slots: torch.Tensor  # (M, J)
    matmuls: torch.Tensor  # (M,)
    operands: torch.Tensor  # (M * J,)
    products: torch.Tensor  # (M * J,)
    jobs: tuple[tuple[tuple[str, int] | None, ...], ...]
    program: torch.Tensor
    lengths: torch.Tensor
    code: tuple[tuple[tuple[int, int, int, int], ...], ...]


@dataclass(frozen=True)
class _Layout:
    """A mix's integer tables, made once per mix (not while a CUDA graph captures: a captured
    step's first, eager calls make them)."""

    slots: int  # R, the last one the scratch slot padding writes to
    stages: tuple[_StageTable, ...]
    columns: torch.Tensor  # (M,) each member's hidden size
    sizes: tuple[int, ...]  # per population: K
    widths: tuple[int, ...]  # and n
    starts: tuple[int, ...]  # and its first member
    states: tuple[int, ...]  # and its number of states

    @property
    def members(self) -> int:
        return sum(self.sizes)

    @property
    def width(self) -> int:  # N
        return max(self.widths)

    @functools.cached_property
    def stacked(self) -> Stacked:
        return stacked(self.stages)


def _layout(programs: tuple[Program, ...], sizes: tuple[int, ...], widths: tuple[int, ...],
            device: torch.device) -> _Layout:
    R = max(program.slots for program in programs) + 1
    scratch = R - 1
    M = sum(sizes)
    count = max(len(program.stages) for program in programs)
    stages = []
    for s in range(count):
        steps = [program.stages[s] if s < len(program.stages) else Stage((), ())
                 for program in programs]
        # a member's last stage ends copying its new states to the next step's state slots
        carries = [[(OPCODES["identity"], R + 1 + i, slot, ZERO)
                    for i, slot in enumerate(program.outputs)]
                   if s == len(program.stages) - 1 else [] for program in programs]
        J = max(len(stage.matmuls) for stage in steps)
        L = max(max(len(stage.instructions) + len(carry)
                    for stage, carry in zip(steps, carries)), 1)
        operand_slots, product_slots, matmuls, jobs, program, lengths = [], [], [], [], [], []
        codes = []
        for stage, carry, K in zip(steps, carries, sizes):
            padding = J - len(stage.matmuls)
            operand_slots += [[o for o, _, _ in stage.matmuls] + [ZERO] * padding] * K
            product_slots += [[p for _, _, p in stage.matmuls] + [scratch] * padding] * K
            matmuls += [len(stage.matmuls)] * K
            jobs.append(tuple(key for _, key, _ in stage.matmuls) + (None,) * padding)
            code = list(stage.instructions) + carry
            nop = (OPCODES["identity"], scratch, ZERO, ZERO)
            program += [code + [nop] * (L - len(code))] * K
            lengths += [len(code)] * K
            codes.append(tuple(tuple(int(x) for x in instruction) for instruction in code))
        member = torch.arange(M).view(M, 1)
        operand_slots = torch.tensor(operand_slots, dtype=torch.long).view(M, J)
        product_slots = torch.tensor(product_slots, dtype=torch.long).view(M, J)
        stages.append(_StageTable(
            J=J,
            operand_slots=operand_slots.to(device, torch.int32),
            product_slots=product_slots.to(device, torch.int32),
            matmuls=torch.tensor(matmuls, dtype=torch.int32, device=device),
            operands=(operand_slots * M + member).flatten().to(device),
            products=(product_slots * M + member).flatten().to(device),
            jobs=tuple(jobs),
            program=torch.tensor(program, dtype=torch.int32, device=device),
            lengths=torch.tensor(lengths, dtype=torch.int32, device=device),
            code=tuple(codes),
        ))
    return _Layout(
        slots=R,
        stages=tuple(stages),
        columns=torch.tensor([n for n, K in zip(widths, sizes) for _ in range(K)], device=device),
        sizes=sizes,
        widths=widths,
        starts=tuple(itertools.accumulate(sizes, initial=0))[:-1],
        states=tuple(len(program.outputs) for program in programs),
    )


_cached_layout = functools.lru_cache(maxsize=64)(_layout)


# -- a step's work in torch -----------------------------------------------------------------------


class _TorchLanguage:
    """What the operation table's Triton expressions call, in torch: the table's derivatives
    then serve the torch instructions too."""

    exp = staticmethod(torch.exp)
    maximum = staticmethod(torch.maximum)
    where = staticmethod(torch.where)


def _in_torch(text: str, *names: str):
    """The operation table's expression `text` as a function of `names`, evaluated in torch."""
    code = compile(text, text, "eval")
    return lambda *values: eval(code, {"tl": _TorchLanguage}, dict(zip(names, values)))


def _forward(name: str):
    operation = ops.BY_NAME[name]
    if operation.kind == "activation" and operation.torch_function:
        function = getattr(torch, operation.torch_function)
        return lambda a, b: function(a)
    return _in_torch(operation.triton.format("a", "b"), "a", "b")


# Per opcode: its value from (a, b), and its operands' gradients from (g, y, a, b).
_FORWARD = {code: _forward(name) for name, code in OPCODES.items()}
_BACKWARD = {code: tuple(_in_torch(text, "g", "y", "a", "b") for text in gradients(name))
             for name, code in OPCODES.items()}


class TorchKernels(StepByStep):
    """A step's work as torch operations, in place. The matmuls: the stage's operand rows
    gathered, one batched matmul, the products scattered. The instructions: each population's
    own, one torch operation each on its members' slots (their own columns), as a CPU gains
    nothing from one launch for all. The window's copies run in torch too, one a tensor."""

    copies_in_torch = True

    @staticmethod
    def stage(values, t, layout, table, weights) -> None:
        """A stage of step t: its matmuls (with `weights`, when it has any), then its
        instructions."""
        if weights is not None:
            TorchKernels.matmul(values, t, layout, table, weights)
        TorchKernels.instructions(values, t, layout, table)

    @staticmethod
    def stage_backward(grads, values, layout, matmuls, instructions) -> None:
        """The backward of `matmuls`, a stage's (t, table, weights), then of `instructions`, the
        stage before's (t, table); either may be None."""
        if matmuls is not None:
            t, table, weights = matmuls
            TorchKernels.matmul_backward(grads, t, layout, table, weights)
        if instructions is not None:
            TorchKernels.instructions_backward(grads, values, instructions[0], layout,
                                               instructions[1])

    @staticmethod
    def matmul(values, t, layout, table, weights) -> None:
        rows = values[t].flatten(0, 1)  # (R * M, B, N)
        rows.index_copy_(0, table.products, torch.bmm(rows.index_select(0, table.operands),
                                                      weights.transpose(1, 2)))

    @staticmethod
    def matmul_backward(grads, t, layout, table, weights) -> None:
        rows = grads[t].flatten(0, 1)
        rows.index_add_(0, table.operands, torch.bmm(rows.index_select(0, table.products),
                                                     weights))

    @staticmethod
    def instructions(values, t, layout, table) -> None:
        steps = values[t:t + 2].flatten(0, 1)  # (2R, M, B, N): this step's slots, the next's
        for slots, code in zip(_own_slots(steps, layout), table.code):
            for op, dst, a, b in code:
                slots[dst] = _FORWARD[op](slots[a], slots[b])

    @staticmethod
    def instructions_backward(grads, values, t, layout, table) -> None:
        steps = zip(_own_slots(grads[t:t + 2].flatten(0, 1), layout),
                    _own_slots(values[t:t + 2].flatten(0, 1), layout), table.code)
        for slot_grads, slots, code in steps:
            for op, dst, a, b in reversed(code):
                g = slot_grads[dst].clone()
                first, second = (gradient(g, slots[dst], slots[a], slots[b])
                                 for gradient in _BACKWARD[op])
                slot_grads[dst] = 0.0  # the slot's value before: read by nothing
                slot_grads[a] += first
                slot_grads[b] += second


def _own_slots(slots, layout) -> list[torch.Tensor]:
    """Per population, the view (2R, K, B, n) of slots (2R, M, B, N) that is its members' own."""
    return [slots[:, start:start + K, :, :n]
            for start, K, n in zip(layout.starts, layout.sizes, layout.widths)]


_KERNELS = {"torch": TorchKernels, "triton": TritonKernels, "persistent": PersistentKernels}
# run_mixed's default on CUDA (elsewhere torch): a stage at a time ("triton") until a GPU has
# measured the whole window's kernels ("persistent") against them; the variable chooses.
CUDA_KERNEL = os.environ.get("CELLSEARCH_MIXED_KERNEL", "triton")


@functools.cache
def usable(device: str) -> bool:
    """Whether the kernels (`CUDA_KERNEL`'s) work on `device`: Triton imports, and a short mix
    of an LSTM and a GRU of different sizes, the GRU's state carried with some rows reset, gives
    the eager engine's values and gradients (`plan.run`, each alone) and final states. Checked
    once per process; when not, says why in a warning."""
    try:
        import triton  # noqa: F401

        from cellsearch.cells import zoo

        generator = torch.Generator().manual_seed(0)
        reset = torch.tensor([True, False, True, False], device=device)
        layers, leaves, starts = [], [], []
        for name, K, n in (("lstm", 2, 8), ("gru", 1, 5)):
            graph = zoo.get(name)
            params = {node.param: torch.randn(K, *parameter_shape(node, n), generator=generator)
                      * 0.3 for node in graph.parameters}
            tensors = [t.to(device).requires_grad_()
                       for t in (torch.randn(K, 3, 4, n, generator=generator), *params.values())]
            leaves += tensors
            carried = name == "gru"
            state = tuple(torch.randn(K, 4, n, generator=generator).to(device) if carried
                          else torch.zeros(K, 4, n, device=device) for _ in graph.states)
            starts.append(tuple(torch.where(reset.view(1, -1, 1), 0.0, s) for s in state)
                          if carried else state)
            layers.append(Layer(plan(graph), dict(zip(params, tensors[1:])), tensors[0], state,
                                reset if carried else None))

        def values_and_gradients(results):
            outputs = [o for o, _ in results]
            loss = sum(o.square().sum() for o in outputs)
            return [*outputs, *(s for _, final in results for s in final),
                    *torch.autograd.grad(loss, leaves)]

        alone = [run(layer.plan, layer.params, layer.x, start)
                 for layer, start in zip(layers, starts)]
        pairs = zip(values_and_gradients(alone),
                    values_and_gradients(run_mixed(layers, CUDA_KERNEL)))
        if all(torch.allclose(a, b, rtol=2e-2, atol=2e-3) for a, b in pairs):
            return True
        problem = "it disagrees with the eager engine"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the mixed engine's kernel is not usable on {device} ({problem})",
                  RuntimeWarning, stacklevel=2)
    return False
