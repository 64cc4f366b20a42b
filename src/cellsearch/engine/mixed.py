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
- All members' slots at a step form one tensor (M, R, B, N): M members of all cells, R slots,
  B rows, N the largest hidden size (a member's columns past its own size stay 0).
- Per stage, one batched matmul forms every member's recurrent products (a member with fewer
  matrices multiplies zeros), and one kernel runs every member's instructions, looping over its
  own program (`instructions_source`, generated from the operation table); its backward runs the
  program in reverse. On a CPU the same instructions run as torch operations.

So a step of any mix of cells is, per stage, one gather, one matmul, one scatter and one kernel
forward, whatever the cells, and no combination is ever compiled. A step is one autograd node
(`_Step`) whose backward runs the stages in reverse on one tensor of the slots' gradients; the
recurrent weights' gradient is formed once per window (`plan.WeightSink`), as the single-cell
engine does. The values and gradients are the eager engine's (`plan.run`) to float rounding.
Every slot is written once a step, but for a sum's running total (only `add` and `sub`, whose
derivatives read no values), so the backward reads every value it needs from the forward's.

Its speed on a GPU is not measured yet (`cellsearch bench --mixed N`). What it costs beyond the
arithmetic: zeroing the (M, R, B, N) slots and their gradients once a step each, and a kernel
whose instructions pass their values through memory (L1/L2) rather than registers.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from cellsearch.cells import ops
from cellsearch.engine.kernels import codegen
from cellsearch.engine.nn import State, parameter_shape
from cellsearch.engine.plan import (
    MatmulGroup,
    Plan,
    Sum,
    WeightSink,
    plan,
    pre_name,
    run,
    static_sum_name,
    window_inputs,
)

# The instruction set: every activation and elementwise operation of the table, in its order.
OPCODES = {op.name: code for code, op in enumerate(
    op for op in ops.OPERATIONS if op.kind in ("activation", "elementwise"))}
# The reverse mode of the binary operations, which the table leaves to each engine:
# (gradient of the first operand, of the second), from the output's gradient g and operands a, b.
BINARY_GRADIENTS = {"add": ("{g}", "{g}"), "sub": ("{g}", "-{g}"),
                    "mul": ("{g} * {b}", "{g} * {a}")}
assert set(ops.names("elementwise")) == set(BINARY_GRADIENTS), "a new binary op needs its gradient"

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
    (`window_inputs`' names, a wide input one slot per chunk) `input_base`.., then every value
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
    state, one (K, B, n) tensor per state."""

    plan: Plan
    params: dict[str, torch.Tensor]
    x: torch.Tensor
    state: State


def run_mixed(layers: Sequence[Layer], kernel: str | None = None,
              layouts: dict | None = None) -> list[tuple[torch.Tensor, State]]:
    """Every layer over its window at once; per layer what `plan.run` returns, (outputs (K, T, B,
    n), final state). The layers share T and B; cells, K and n may differ. `kernel`: "triton" or
    "torch" for the instructions (default: Triton on CUDA, torch elsewhere). `layouts`: where
    the mix's integer tables are kept, for a caller that captures this run into a CUDA graph and
    so must keep them alive as long as the graph (default: a bounded cache)."""
    T, B = layers[0].x.shape[1:3]
    if any(layer.x.shape[1:3] != (T, B) for layer in layers):
        raise ValueError("the layers of a mix share their window: T and B must agree")
    device = layers[0].x.device
    kernel = kernel or ("triton" if device.type == "cuda" else "torch")
    if kernel not in _INSTRUCTIONS:
        raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(_INSTRUCTIONS)}")
    N = max(layer.x.shape[3] for layer in layers)
    S = max(len(layer.plan.graph.states) for layer in layers)
    windows = [window_inputs(layer.plan, layer.params, layer.x) for layer in layers]
    # a wide input (a group's static addends) one slot per chunk; a constant may be (1, 1, 1, 1)
    chunked = [tuple((name, c) for name, value in inputs.items()
                     for c in range(max(value.shape[-1] // layer.x.shape[3], 1)))
               for layer, (inputs, _) in zip(layers, windows)]
    programs = tuple(compile_program(layer.plan, 1 + S, keys)
                     for layer, keys in zip(layers, chunked))
    sizes = tuple(layer.x.shape[0] for layer in layers)
    widths = tuple(layer.x.shape[3] for layer in layers)
    key = (programs, sizes, widths, S, device)
    if layouts is None:
        layout = _cached_layout(*key)
    else:
        if key not in layouts:
            layouts[key] = _layout(*key)
        layout = layouts[key]
    I = layout.inputs

    def padded(value: torch.Tensor) -> torch.Tensor:
        return F.pad(value, (0, N - value.shape[-1]))

    # (M, T, I, B, N): every member's step inputs for the window
    inputs = torch.cat([
        torch.stack([padded(windows[p][0][name][..., c * n:(c + 1) * n].expand(K, T, B, n))
                     for name, c in keys]
                    + [layer.x.new_zeros(K, T, B, N)] * (I - len(keys)), dim=2)
        for p, (layer, keys, K, n) in enumerate(zip(layers, chunked, sizes, widths))
    ], dim=0) if I else None
    state = torch.cat([
        torch.stack([padded(s) for s in layer.state]
                    + [layer.x.new_zeros(K, B, N)] * (S - len(layer.state)), dim=1)
        for layer, K in zip(layers, sizes)
    ], dim=0)  # (M, S, B, N)
    instructions = _INSTRUCTIONS[kernel]

    # Per stage the (M*J, N, N) transposed matrices; their gradient forms once per window: each
    # step's backward records the stage's operands and product gradients, and a sink upstream of
    # every step turns the records into dW.
    stages = []
    for table in layout.stages:
        weights = _stage_weights(table, [group for _, group in windows], sizes, widths, state)
        record = None
        if weights is not None and torch.is_grad_enabled() and weights.requires_grad:
            record = []
            (state,) = WeightSink.apply(weights, record, state)
            weights = weights.detach()
        stages.append((table, weights, record))

    # (unbound once: autograd then stacks the steps' input gradients once, not once a step)
    step_inputs = inputs.unbind(1) if I else [None] * T
    outputs = []
    for t in range(T):
        state = _Step.apply(layout, stages, instructions, state, step_inputs[t])
        outputs.append(state[:, 0])
    outputs = torch.stack(outputs, dim=1)  # (M, T, B, N)
    results, start = [], 0
    for layer, K, n in zip(layers, sizes, widths):
        rows = slice(start, start + K)
        final = tuple(state[rows, i, :, :n] for i in range(len(layer.state)))
        results.append((outputs[rows, ..., :n], final))
        start += K
    return results


class _Step(torch.autograd.Function):
    """One step of a mix: (state (M, S, B, N), step inputs (M, I, B, N) or None) -> new state.

    Forward fills one (M, R, B, N) tensor of slots: the states and inputs, then per stage the
    products (gathered operands times the stage's matrices, scattered to their slots) and the
    instructions, in place. Backward runs the same in reverse on one tensor of the slots'
    gradients, from the forward's slots: the instructions' reverse, then each product's gradient
    back to its operand (and recorded, for dW once per window). So a step writes its slots once
    each way rather than copying all of them at every operation."""

    @staticmethod
    def forward(ctx, layout, stages, instructions, state, inputs):
        M, S, B, N = state.shape
        I = layout.inputs
        # zeros: slot 0, the scratch slot, and the columns past a member's size stay 0
        values = state.new_zeros(M, layout.slots, B, N)
        rows = values.view(-1, B, N)  # (M * R, B, N), the tables' rows
        values[:, 1:1 + S] = state
        if I:
            values[:, 1 + S:1 + S + I] = inputs
        for table, weights, _ in stages:
            if weights is not None:
                operands = rows.index_select(0, table.operands)  # (M * J, B, N)
                rows.index_copy_(0, table.products, torch.bmm(operands, weights))
            instructions.forward(values, table.program, table.lengths, layout.columns)
        ctx.save_for_backward(values)
        ctx.layout, ctx.stages, ctx.instructions = layout, stages, instructions
        return rows.index_select(0, layout.outputs).view(M, S, B, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_state):
        (values,) = ctx.saved_tensors
        layout = ctx.layout
        _, _, B, N = values.shape
        S = grad_state.shape[1]
        grads = torch.zeros_like(values)
        rows, value_rows = grads.view(-1, B, N), values.view(-1, B, N)
        rows.index_add_(0, layout.outputs, grad_state.reshape(-1, B, N))
        for table, weights, record in reversed(ctx.stages):
            ctx.instructions.backward(grads, values, table.program, table.lengths,
                                      layout.columns)
            if weights is not None:
                product_grads = rows.index_select(0, table.products)
                if record is not None:
                    record.append((value_rows.index_select(0, table.operands), product_grads))
                operand_grads = torch.bmm(product_grads, weights.transpose(1, 2))
                rows.index_add_(0, table.operands, operand_grads)
        I = layout.inputs
        return None, None, None, grads[:, 1:1 + S], grads[:, 1 + S:1 + S + I] if I else None


@dataclass(frozen=True)
class _StageTable:
    """One stage of a mix as tensors: the operand and product slot of each member's `J` matmuls
    (padding: slot 0 times a zero matrix, written to the scratch slot) as rows of the slots
    viewed as (M * R, B, N), member-major; each population's matrices (`jobs`: its group operand
    and chunk, or None); and the instructions (M, L, 4) with their counts (M,)."""

    J: int
    operands: torch.Tensor  # (M * J,)
    products: torch.Tensor  # (M * J,)
    jobs: tuple[tuple[tuple[str, int] | None, ...], ...]
    program: torch.Tensor
    lengths: torch.Tensor


@dataclass(frozen=True)
class _Layout:
    """A mix's integer tables, made once per mix (not while a CUDA graph captures: a captured
    step's first, eager calls make them)."""

    inputs: int  # I: step-input slots
    slots: int  # R, the last one the scratch slot padding writes to
    stages: tuple[_StageTable, ...]
    columns: torch.Tensor  # (M,) each member's hidden size
    outputs: torch.Tensor  # (M * S,) rows of each member's new states, padded with its zero slot


def _layout(programs: tuple[Program, ...], sizes: tuple[int, ...], widths: tuple[int, ...],
            S: int, device: torch.device) -> _Layout:
    R = max(program.slots for program in programs) + 1
    scratch = R - 1
    stages = []
    for s in range(max(len(program.stages) for program in programs)):
        steps = [program.stages[s] if s < len(program.stages) else Stage((), ())
                 for program in programs]
        J = max(len(stage.matmuls) for stage in steps)
        L = max(max(len(stage.instructions) for stage in steps), 1)
        operands, products, jobs, program, lengths = [], [], [], [], []
        first_rows = iter(range(0, sum(sizes) * R, R))  # each member's slot 0
        for stage, K in zip(steps, sizes):
            padding = J - len(stage.matmuls)
            for row in itertools.islice(first_rows, K):
                operands += [row + o for o, _, _ in stage.matmuls] + [row + ZERO] * padding
                products += [row + p for _, _, p in stage.matmuls] + [row + scratch] * padding
            jobs.append(tuple(key for _, key, _ in stage.matmuls) + (None,) * padding)
            nop = (OPCODES["identity"], scratch, ZERO, ZERO)
            program += [list(stage.instructions) + [nop] * (L - len(stage.instructions))] * K
            lengths += [len(stage.instructions)] * K
        stages.append(_StageTable(
            J=J,
            operands=torch.tensor(operands, dtype=torch.long, device=device),
            products=torch.tensor(products, dtype=torch.long, device=device),
            jobs=tuple(jobs),
            program=torch.tensor(program, dtype=torch.int32, device=device),
            lengths=torch.tensor(lengths, dtype=torch.int32, device=device),
        ))
    members = [p for p, K in zip(programs, sizes) for _ in range(K)]
    outputs = [m * R + slot for m, p in enumerate(members)
               for slot in list(p.outputs) + [ZERO] * (S - len(p.outputs))]
    return _Layout(
        inputs=max(len(program.inputs) for program in programs),
        slots=R,
        stages=tuple(stages),
        columns=torch.tensor([n for n, K in zip(widths, sizes) for _ in range(K)], device=device),
        outputs=torch.tensor(outputs, dtype=torch.long, device=device),
    )


_cached_layout = functools.lru_cache(maxsize=64)(_layout)


def _stage_weights(table: _StageTable, group_weights, sizes, widths,
                   like: torch.Tensor) -> torch.Tensor | None:
    """(M*J, N, N): member m's J transposed matrices of the stage, zero-padded (zeros where it
    has fewer); None when the stage has no matmul."""
    if not table.J:
        return None
    N = like.shape[-1]
    blocks = []
    for jobs, weights, K, n in zip(table.jobs, group_weights, sizes, widths):
        blocks.append(torch.stack([
            F.pad(weights[key[0]][..., key[1] * n:(key[1] + 1) * n], (0, N - n, 0, N - n))
            if key is not None else like.new_zeros(K, N, N)
            for key in jobs], dim=1))  # (K, J, N, N)
    return torch.cat(blocks).flatten(0, 1)


# -- the instructions in torch --------------------------------------------------------------------


class _TorchLanguage:
    """What the operation table's Triton expressions call, in torch: the table's derivatives
    then serve the torch instructions too."""

    exp = staticmethod(torch.exp)
    maximum = staticmethod(torch.maximum)
    where = staticmethod(torch.where)


def _expression(text: str, **names) -> torch.Tensor:
    return eval(text, {"tl": _TorchLanguage}, names)  # the operation table's own text


class TorchInstructions:
    """Every member's instructions on its slots as torch operations, in place, as the kernel
    runs them: instruction i of all members at once, each operation that some member runs there
    computed for all and each member's own kept (a host copy of the opcodes per instruction:
    this is the CPU's way, and the kernel's reference)."""

    @staticmethod
    def forward(values, program, lengths, columns) -> None:
        member, keep = _members_and_columns(values, columns)
        for i in range(program.shape[1]):
            op, dst, a, b = program[:, i].long().unbind(1)
            first, second = values[member, a], values[member, b]
            result = first
            for name in _present(op):
                operation = ops.BY_NAME[name]
                value = (getattr(torch, operation.torch_function)(first)
                         if operation.kind == "activation" and operation.torch_function
                         else _expression(operation.triton.format("a", "b"), a=first, b=second))
                result = torch.where((op == OPCODES[name]).view(-1, 1, 1), value, result)
            values[member, dst] = torch.where(keep, result, values[member, dst])

    @staticmethod
    def backward(grads, values, program, lengths, columns) -> None:
        member, keep = _members_and_columns(values, columns)
        for i in reversed(range(program.shape[1])):
            op, dst, a, b = program[:, i].long().unbind(1)
            g, y = grads[member, dst], values[member, dst]
            first, second = values[member, a], values[member, b]
            first_grad, second_grad = torch.zeros_like(g), torch.zeros_like(g)
            for name in _present(op):
                chosen = (op == OPCODES[name]).view(-1, 1, 1)
                for target, text in zip((first_grad, second_grad), _gradients(name)):
                    value = _expression(text, g=g, y=y, a=first, b=second)
                    target.copy_(torch.where(chosen, value, target))
            grads[member, dst] = 0.0  # the slot's value before: read by nothing
            grads.index_put_((member, a), first_grad * keep, accumulate=True)
            grads.index_put_((member, b), second_grad * keep, accumulate=True)


def _members_and_columns(values, columns):
    """(member indices, (M, 1, N) which columns are a member's own)."""
    M, N = values.shape[0], values.shape[-1]
    member = torch.arange(M, device=values.device)
    return member, (torch.arange(N, device=values.device) < columns[:, None])[:, None]


def _present(op: torch.Tensor) -> list[str]:
    codes = set(op.tolist())
    return [name for name, code in OPCODES.items() if code in codes]


def _gradients(name: str) -> tuple[str, str]:
    """The operation's reverse mode as the table's expressions: (first operand's, second's)."""
    operation = ops.BY_NAME[name]
    if operation.kind == "activation":
        return operation.triton_gradient.format(g="g", y="y"), "0.0 * g"  # (a tensor, in torch)
    return tuple(text.format(g="g", a="a", b="b") for text in BINARY_GRADIENTS[name])


# -- the instructions in one Triton kernel --------------------------------------------------------


@functools.cache
def instructions_source() -> str:
    """A module with `forward_kernel` and `backward_kernel`: one program per member and block of
    its (B, N) slot, looping over the member's instructions; each value goes to memory, and the
    next instruction reads it back (a barrier between). The operations come from the table."""
    forward, first, second = "0.0", "0.0", "0.0"
    for name, code in reversed(OPCODES.items()):
        value = ops.BY_NAME[name].triton.format("a", "b")  # (an activation reads only {0})
        gradient_a, gradient_b = _gradients(name)
        forward = f"tl.where(op == {code}, {value}, {forward})"
        first = f"tl.where(op == {code}, {gradient_a}, {first})"
        second = f"tl.where(op == {code}, {gradient_b}, {second})"
    return f'''"""Generated by cellsearch.engine.mixed: every member's instructions, one kernel."""
import triton
import triton.language as tl


@triton.jit
def forward_kernel(values, program, lengths, columns, member_stride, program_stride, N, size,
                   BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (offsets < size) & (offsets % N < tl.load(columns + m))
    base = values + m * member_stride
    code = program + m * program_stride
    for i in range(tl.load(lengths + m)):
        op = tl.load(code + 4 * i)
        a = tl.load(base + tl.load(code + 4 * i + 2) * size + offsets, mask=mask, other=0.0)
        b = tl.load(base + tl.load(code + 4 * i + 3) * size + offsets, mask=mask, other=0.0)
        tl.store(base + tl.load(code + 4 * i + 1) * size + offsets, {forward}, mask=mask)
        tl.debug_barrier()


@triton.jit
def backward_kernel(grads, values, program, lengths, columns, member_stride, program_stride, N,
                    size, BLOCK: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (offsets < size) & (offsets % N < tl.load(columns + m))
    base = values + m * member_stride
    grad_base = grads + m * member_stride
    code = program + m * program_stride
    length = tl.load(lengths + m)
    for j in range(length):
        i = length - 1 - j
        op = tl.load(code + 4 * i)
        dst = tl.load(code + 4 * i + 1) * size + offsets
        first = tl.load(code + 4 * i + 2) * size + offsets
        second = tl.load(code + 4 * i + 3) * size + offsets
        g = tl.load(grad_base + dst, mask=mask, other=0.0)
        y = tl.load(base + dst, mask=mask, other=0.0)
        a = tl.load(base + first, mask=mask, other=0.0)
        b = tl.load(base + second, mask=mask, other=0.0)
        tl.store(grad_base + dst, g * 0.0, mask=mask)  # dst's value before: unread
        tl.debug_barrier()
        tl.store(grad_base + first, tl.load(grad_base + first, mask=mask, other=0.0) + {first},
                 mask=mask)
        tl.debug_barrier()
        tl.store(grad_base + second, tl.load(grad_base + second, mask=mask, other=0.0) + {second},
                 mask=mask)
        tl.debug_barrier()
'''


def _launch(kernel: str, program, lengths, columns, *tensors) -> None:
    module = codegen.load_module(instructions_source(), "mixed")
    target = tensors[0]
    M, _, B, N = target.shape
    size = B * N
    BLOCK = min(1024, codegen.block_size(size))
    grid = (M, -(-size // BLOCK))
    getattr(module, kernel)[grid](*tensors, program, lengths, columns, target.stride(0),
                                  program.stride(0), N, size, BLOCK=BLOCK)


class TritonInstructions:
    """`TorchInstructions` in the generated kernel (`instructions_source`)."""

    @staticmethod
    def forward(values, program, lengths, columns) -> None:
        _launch("forward_kernel", program, lengths, columns, values)

    @staticmethod
    def backward(grads, values, program, lengths, columns) -> None:
        _launch("backward_kernel", program, lengths, columns, grads, values)


_INSTRUCTIONS = {"torch": TorchInstructions, "triton": TritonInstructions}


@functools.cache
def usable(device: str) -> bool:
    """Whether the instruction kernel works on `device`: Triton imports, and a short mix of an
    LSTM and a GRU of different sizes gives the eager engine's values and gradients (`plan.run`,
    each alone). Checked once per process; when not, says why in a warning."""
    try:
        import triton  # noqa: F401

        from cellsearch.cells import zoo

        generator = torch.Generator().manual_seed(0)
        layers, leaves = [], []
        for name, K, n in (("lstm", 2, 8), ("gru", 1, 5)):
            graph = zoo.get(name)
            params = {node.param: torch.randn(K, *parameter_shape(node, n), generator=generator)
                      * 0.3 for node in graph.parameters}
            tensors = [t.to(device).requires_grad_()
                       for t in (torch.randn(K, 3, 4, n, generator=generator), *params.values())]
            leaves += tensors
            state = tuple(torch.zeros(K, 4, n, device=device) for _ in graph.states)
            layers.append(Layer(plan(graph), dict(zip(params, tensors[1:])), tensors[0], state))

        def values_and_gradients(results):
            outputs = [o for o, _ in results]
            loss = sum(o.square().sum() for o in outputs)
            return [*outputs, *torch.autograd.grad(loss, leaves)]

        alone = [run(layer.plan, layer.params, layer.x, layer.state) for layer in layers]
        pairs = zip(values_and_gradients(alone),
                    values_and_gradients(run_mixed(layers, "triton")))
        if all(torch.allclose(a, b, rtol=2e-2, atol=2e-3) for a, b in pairs):
            return True
        problem = "it disagrees with the eager engine"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use it
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"the mixed engine's kernel is not usable on {device} ({problem})",
                  RuntimeWarning, stacklevel=2)
    return False
