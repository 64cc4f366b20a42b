"""Persistent kernels for small cells: one program per member runs a layer's whole window.

At the memorization task's sizes (25K parameters: about 50 units, a 20-row minibatch) a
timestep's work is a few microseconds of latency in any form, and a window of 35 steps is
launch after launch. When a member's state fits one block of registers (n and B at most 64),
one generated kernel runs every step of the window, the state carried in registers from step to
step and each matmul a `tl.dot` of that state with the member's matrices, which stay in L1/L2;
a second kernel runs the backward over the window in reverse, carrying the state gradient in
registers. So a layer is two launches per window, whatever its cell. The forward also stores each
step's values that the backward's derivatives read (an LSTM's gates and tanh(c)), which the
backward loads a step ahead: recomputing them there, as the per-step kernels do, would put a
second chain of matmuls and activations on every step's path, and at these sizes a step's time
is that path's latency. Per step the backward stores what the window-level matmuls need
afterwards: each matmul group's product gradient (the gradient of its static addends too) and
operand; each static input's gradient.

The arithmetic is `codegen`'s, as the per-step kernels' is (the same statements and derivatives);
`fused.run_fused` hands a layer here when `fits`.
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

from cellsearch.engine.kernels import codegen
from cellsearch.engine.kernels.codegen import (
    Notes,
    Statement,
    Term,
    forward_statement,
    gradient_statement,
    reads_of,
    total,
)
from cellsearch.engine.plan import MatmulGroup, Plan, pre_name

MAX_SIZE = 64  # units and minibatch rows a program holds (a 64 x 64 float32 tile per value)


def fits(B: int, n: int) -> bool:
    return B <= MAX_SIZE and n <= MAX_SIZE


def num_warps(kernel: str, BN: int) -> int:
    """Warps per program. Measured on an H100 and an H200 (`benchmarks/RESULTS.md`): 8 for every
    backward and for forwards of 64-unit tiles; 4 for forwards of 32-unit tiles, whose short
    dependent chain pays more for synchronising 8 warps than it gains from them."""
    return 4 if kernel == "forward_kernel" and BN <= 32 else 8


def kernel_source(plan_: Plan, inputs: tuple[str, ...], hoist: bool = True,
                  notes: Notes = None) -> str:
    """Python source of a module with `forward_kernel` and `backward_kernel` for the plan's loop;
    `inputs` are the step inputs' names (`plan.window_inputs`), in argument order. `hoist`:
    load the matrices into registers once, before the time loop, rather than every step.
    `notes`: as `fused.kernel_source`'s."""
    code = _Code(plan_, inputs, notes)
    comment = codegen.commenter(notes)
    graph, groups, var, pre, saved = plan_.graph, code.groups, code.var, code.pre, code.saved

    def load(pointer: str, time: str, column: str = "j") -> str:
        return f"tl.load({_at(pointer, time, column)}, mask=mask, other=0.0)"

    # Tile W<g>_<c>[r, j] = W<g>[r, c*n + j]: chunk c of group g's matrices side by side.
    weights = [f"{'    ' * (1 + (not hoist))}w{g}_{c} = tl.load(w{g} + k * w{g}_sk + r * w{g}_sr "
               f"+ ({_column(c)}) * w{g}_sc, mask=wmask, other=0.0)"
               for g, group in enumerate(groups) for c in range(len(group.members))]

    def step_loads(time: str, indent: str = "        ", wanted=None) -> list[str]:
        """A step's inputs: what the loop reads (q*) and the groups' static addends (a*), those
        in `wanted` if given. Loaded a step ahead: they do not depend on the state, so their
        latency hides behind a step."""
        lines = [(f"q{i}", f"{indent}q{i} = {load(f'in{i}', time)}")
                 for i, name in enumerate(inputs) if name in code.reads]
        lines += [(f"a{g}_{c}", f"{indent}a{g}_{c} = {load(f'in{pre[g]}', time, _column(c))}")
                  for g, group in enumerate(groups) if g in pre
                  for c in range(len(group.members)) if group.fused_sums[c] is not None]
        return [line for name, line in lines if wanted is None or name in wanted]

    def step_forward() -> list[str]:
        """One step's values from the states s* and the loaded inputs."""
        lines = []
        for item in plan_.loop:
            if isinstance(item, MatmulGroup):
                g = groups.index(item)
                operand = f"tl.where(mask, {var[item.operand]}, 0.0)"  # no padding in the dot
                for c in range(len(item.members)):
                    addend = f" + a{g}_{c}" if g in pre and item.fused_sums[c] is not None else ""
                    value = item.fused_sums[c] if addend else item.members[c]
                    lines.append(f"        m{g}_{c} = tl.dot({operand}, w{g}_{c}, "
                                 f"input_precision=PRECISION){addend}"
                                 + comment(value))
                continue
            lines.append(forward_statement(item, var, notes).line("        "))
        return lines

    joined = ", ".join
    input_arguments = joined(f"in{i}, in{i}_sk, in{i}_st, in{i}_sb, in{i}_sn"
                              for i in range(len(inputs)))
    weight_arguments = joined(f"w{g}, w{g}_sk, w{g}_sr, w{g}_sc" for g in range(len(groups)))
    history_arguments = joined(f"h{i}, h{i}_sk, h{i}_st, h{i}_sb, h{i}_sn"
                                for i in range(len(graph.states)))
    saved_arguments = joined(f"v{i}, v{i}_sk, v{i}_st, v{i}_sb, v{i}_sn" for i in range(len(saved)))
    header = [
        "    k = tl.program_id(0).to(tl.int64)",
        "    b = tl.arange(0, BB)[:, None]",
        "    j = tl.arange(0, BN)[None, :]",
        "    r = tl.arange(0, BN)[:, None]",
        "    mask = (b < B) & (j < n)",
        "    wmask = (r < n) & (j < n)",
    ]
    sizes = "T, B, n, BB: tl.constexpr, BN: tl.constexpr, PRECISION: tl.constexpr"
    arguments = joined(filter(None, [input_arguments, weight_arguments, history_arguments,
                                     saved_arguments]))
    new_state = [f"        s{i} = {var[output]}" for i, output in enumerate(graph.outputs)]
    forward = [
        "@triton.jit",
        f"def forward_kernel({arguments}, {sizes}):",
        *header,
        *(f"    s{i} = {load(f'h{i}', '0')}" for i in range(len(graph.states))),
        *(weights if hoist else []),
        *step_loads("0", "    "),
        "    for t in range(T):",
        *([] if hoist else weights),
        *step_forward(),
        *(f"        tl.store({_at(f'v{i}', 't')}, {value}, mask=mask)"
          for i, value in enumerate(saved)),
        *new_state,
        *step_loads("tl.minimum(t + 1, T - 1)"),
        *(f"        tl.store({_at(f'h{i}', 't + 1')}, s{i}, mask=mask)"
          for i in range(len(graph.states))),
    ]

    # Backward: d<i> carries the gradient of state i from step to step.
    gradient_arguments = joined(filter(None, [
        "go, go_sk, go_st, go_sb, go_sn",  # the outputs' gradient, (K, T, B, n)
        joined(f"gf{i}, gf{i}_sk, gf{i}_sb, gf{i}_sn" for i in range(len(graph.states))),
        joined(f"gp{g}, gp{g}_sk, gp{g}_st, gp{g}_sb, gp{g}_sn" for g in range(len(groups))),
        joined(f"x{g}, x{g}_sk, x{g}_st, x{g}_sb, x{g}_sn" for g in range(len(groups))),
        joined(f"gin{i}, gin{i}_sk, gin{i}_st, gin{i}_sb, gin{i}_sn" for i in code.gradients),
        joined(f"gs{i}, gs{i}_sk, gs{i}_sb, gs{i}_sn" for i in range(len(graph.states))),
    ]))

    def backward_loads(time: str, indent: str = "        ") -> list[str]:
        """The states before step `time`, the inputs and saved values its derivatives read, and
        its outputs' gradient."""
        return [*(f"{indent}s{i} = {load(f'h{i}', time)}" for i in range(len(graph.states))),
                *step_loads(time, indent, code.referenced),
                *(f"{indent}{value} = {load(f'v{i}', time)}" for i, value in enumerate(saved)),
                f"{indent}gq = {load('go', time)}"]

    transposed = [f"{'    ' * (1 + (not hoist))}wt{g}_{c} = tl.trans(w{g}_{c})"
                  for g, group in enumerate(groups) for c in range(len(group.members))]
    backward = [
        "@triton.jit",
        f"def backward_kernel({arguments}, {gradient_arguments}, {sizes}):",
        *header,
        *(f"    d{i} = tl.load(gf{i} + k * gf{i}_sk + b * gf{i}_sb + j * gf{i}_sn, mask=mask, "
          "other=0.0)" for i in range(len(graph.states))),
        *(weights + transposed if hoist else []),
        *backward_loads("T - 1", "    "),
        "    for u in range(T):",
        "        t = T - 1 - u",
        *([] if hoist else weights + transposed),
        *code.reverse,
        *backward_loads("tl.maximum(t - 1, 0)"),
        *(f"    tl.store(gs{i} + k * gs{i}_sk + b * gs{i}_sb + j * gs{i}_sn, d{i}, mask=mask)"
          for i in range(len(graph.states))),
    ]
    return "\n".join([
        "# Generated by cellsearch.engine.kernels.persistent from a cell graph; do not edit.",
        "import triton",
        "import triton.language as tl",
        "", "", *forward, "", "", *backward, "",
    ])


class _Code:
    """What both kernels are generated from: the kernel variable of every value (states s<i>,
    step inputs q<i>, products m<g>_<c>, loop items y<i>), the backward's loop body (`reverse`)
    and the forward values it reads (`saved`, which the forward stores for it)."""

    def __init__(self, plan_: Plan, inputs: tuple[str, ...], notes: Notes = None):
        self.referenced: set[str] = set()  # the variables the backward's loop body reads
        self.notes = notes  # for comments (`codegen.commenter`)
        graph = plan_.graph
        self.groups = groups = [item for item in plan_.loop if isinstance(item, MatmulGroup)]
        var: dict[str, str] = {name: f"s{i}" for i, name in enumerate(graph.states)}
        var.update({name: f"q{i}" for i, name in enumerate(inputs)})  # (in<i>: their pointers)
        for g, group in enumerate(groups):
            var.update({member: f"m{g}_{c}" for c, member in enumerate(group.members)})
        items = [item for item in plan_.loop if not isinstance(item, MatmulGroup)]
        var.update({item.name: f"y{i}" for i, item in enumerate(items)})
        self.var = var
        self.pre = {g: inputs.index(pre_name(group.operand)) for g, group in enumerate(groups)
                    if pre_name(group.operand) in inputs}
        # step inputs whose gradient the backward stores (a group's static addends: gp<g>)
        self.gradients = [i for i in range(len(inputs)) if i not in self.pre.values()]
        self.reads = _step_reads(plan_, inputs)
        self.reverse = self._reverse_lines(plan_, inputs)
        computed = [var[m] for group in groups for m in group.members]
        computed += [var[item.name] for item in items]
        self.saved = sorted(set(computed) & self.referenced, key=computed.index)

    def _reverse_lines(self, plan_: Plan, inputs: tuple[str, ...]) -> list[str]:
        """One backward step: the gradients of step t's values from d<i> (the new states') and gq
        (the outputs'); stores what the window-level matmuls need; leaves d<i> for step t - 1.
        Adds every variable it reads to `referenced`."""
        graph, var, groups = plan_.graph, self.var, self.groups
        comment = codegen.commenter(self.notes)
        terms: dict[str, list[Term]] = {name: [] for name in var}
        lines = []

        def emit(line: str, reads) -> None:
            lines.append(line)
            self.referenced.update(reads)

        def gradient_or_zeros(name: str) -> str:
            return total(terms[name]) or "tl.full([BB, BN], 0.0, tl.float32)"

        for i, output in enumerate(graph.outputs):
            terms[output].append(Term(f"d{i}", frozenset({f"d{i}"})) if i
                                 else Term(f"(d{i} + gq)", frozenset({f"d{i}", "gq"})))
        for item in reversed(plan_.loop):
            if isinstance(item, MatmulGroup):
                g = groups.index(item)
                for c, member in enumerate(item.members):
                    gradient = f"g{var[member]}"
                    statement = Statement(gradient, f"tl.where(mask, {gradient_or_zeros(member)}"
                                          ", 0.0)", reads_of(terms[member]))
                    emit(statement.line("        ") + comment(member, "d "), statement.reads)
                    emit(f"        tl.store({_at(f'gp{g}', 't', _column(c))}, {gradient}, "
                         "mask=mask)", ())
                    terms[item.operand].append(Term(
                        f"tl.dot({gradient}, wt{g}_{c}, input_precision=PRECISION)",
                        frozenset({gradient})))
                emit(f"        tl.store({_at(f'x{g}', 't')}, {var[item.operand]}, mask=mask)"
                     + comment(item.operand), {var[item.operand]})
                continue
            if statement := gradient_statement(item, var, terms, self.notes):
                emit(statement.line("        "), statement.reads)
        for i, name in enumerate(inputs):
            if i in self.gradients:
                emit(f"        tl.store({_at(f'gin{i}', 't')}, {gradient_or_zeros(name)}, "
                     "mask=mask)" + comment(name, "d "), reads_of(terms[name]))
        for i, state in enumerate(graph.states):
            emit(f"        d{i} = tl.where(mask, {total(terms[state]) or f'0.0 * d{i}'}, 0.0)"
                 + comment(state, "d "), reads_of(terms[state]))
        return lines


def _at(pointer: str, time: str, column: str = "j") -> str:
    """The address of a tile at step `time` of a (K, T, B, width) argument."""
    return (f"{pointer} + k * {pointer}_sk + ({time}) * {pointer}_st + b * {pointer}_sb"
            f" + ({column}) * {pointer}_sn")


def _column(chunk: int) -> str:
    return f"j + {chunk} * n" if chunk else "j"


_source = functools.lru_cache(maxsize=256)(kernel_source)


@functools.lru_cache(maxsize=256)
def saved_count(plan_: Plan, inputs: tuple[str, ...]) -> int:
    """How many values per step the forward kernel stores for the backward."""
    return len(_Code(plan_, inputs).saved)


def _step_reads(plan_: Plan, inputs: tuple[str, ...]) -> set[str]:
    """The step inputs the loop reads directly (a group's static addends are read with it)."""
    fused_sums = codegen.fused_sum_names(plan_)
    names = set(plan_.graph.outputs)
    for item in plan_.loop:
        if not isinstance(item, MatmulGroup):
            names.update(codegen.item_reads(item, fused_sums))
    return names & set(inputs)


class PersistentSequence(torch.autograd.Function):
    """`fused._FusedSequence` for cells that `fit`: the same inputs and outputs."""

    @staticmethod
    def forward(ctx, plan_: Plan, T: int, names: tuple[str, ...], operands: tuple[str, ...],
                *tensors):
        inputs = tensors[:len(names)]
        weights = tensors[len(names):len(names) + len(operands)]
        state = tensors[len(names) + len(operands):]
        K, B, n = state[0].shape
        expanded = [v.expand(K, T, B, codegen.input_width(name, plan_, n))
                    for name, v in zip(names, inputs)]
        histories = []
        for value in state:
            history = value.new_empty(K, T + 1, B, n)
            history[:, 0] = value
            histories.append(history)
        saved = [state[0].new_empty(K, T, B, n) for _ in range(saved_count(plan_, names))]
        sizes = {"BB": codegen.block_size(B), "BN": codegen.block_size(n),
                 "PRECISION": codegen.matmul_precision(state[0])}
        _launch("forward_kernel", plan_, names, K, sizes,
                *(v for x in [*expanded, *weights, *histories, *saved] for v in codegen.strided(x)),
                T, B, n)
        ctx.plan, ctx.names, ctx.sizes = plan_, names, sizes
        ctx.shapes = [v.shape for v in inputs]
        ctx.expanded, ctx.histories, ctx.saved = expanded, histories, saved
        ctx.save_for_backward(*weights)
        return (histories[0][:, 1:], *(h[:, T].clone() for h in histories))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, *grad_final):
        codegen.check_first_backward(ctx.histories)
        plan_, names, expanded, histories, saved = (ctx.plan, ctx.names, ctx.expanded,
                                                     ctx.histories, ctx.saved)
        weights = ctx.saved_tensors
        K, T1, B, n = histories[0].shape
        T = T1 - 1
        # The kernel writes every element of these (no zero fill needed)...
        new = histories[0].new_empty
        groups = [item for item in plan_.loop if isinstance(item, MatmulGroup)]
        product_grads = [new(K, T, B, len(g.members) * n) for g in groups]
        operand_values = [new(K, T, B, n) for _ in groups]
        product_of = {pre_name(g.operand): p for g, p in zip(groups, product_grads)}
        input_grads = {name: new(K, T, B, n) for name in names if name not in product_of}
        state_grads = [new(K, B, n) for _ in histories]
        # ...and reads these: a gradient autograd did not give is zero.
        zeros = histories[0].new_zeros
        grad_outputs = grad_outputs if grad_outputs is not None else zeros(K, T, B, n)
        final = [g if g is not None else zeros(K, B, n) for g in grad_final]
        _launch("backward_kernel", plan_, names, K, ctx.sizes,
                *(v for x in [*expanded, *weights, *histories, *saved, grad_outputs, *final,
                              *product_grads,
                              *operand_values, *input_grads.values(), *state_grads]
                  for v in codegen.strided(x)),
                T, B, n)
        grad_inputs = [(product_of[name] if name in product_of else input_grads[name])
                       .sum_to_size(shape) for name, shape in zip(names, ctx.shapes)]
        grad_weights = [  # dW = sum_t v_t^T g_t, all steps in one batched matmul
            torch.bmm(x.view(K, T * B, n).transpose(1, 2), p.view(K, T * B, -1))
            for x, p in zip(operand_values, product_grads)
        ]
        ctx.expanded = ctx.histories = ctx.saved = None
        return (None, None, None, None, *grad_inputs, *grad_weights, *state_grads)


_UNHOISTED: set = set()  # (plan, inputs, sizes) whose hoisted matrices did not fit


def _launch(kernel: str, plan_: Plan, names: tuple[str, ...], K: int, sizes: dict, *arguments):
    """Runs one of the plan's kernels for K members. Matrices hoisted into registers are fastest,
    but a cell with many of them may not fit a program's resources: then they are loaded each
    step instead."""
    from triton.runtime.errors import OutOfResources

    key = (plan_, names, tuple(sizes.items()))
    for hoist in (True, False):
        if hoist and key in _UNHOISTED:
            continue
        module = codegen.load_module(_source(plan_, names, hoist), "persistent")
        try:
            warps = num_warps(kernel, sizes["BN"])
            getattr(module, kernel)[(K,)](*arguments, **sizes, num_warps=warps, num_stages=1)
            return
        except OutOfResources:
            if not hoist:
                raise
            _UNHOISTED.add(key)
