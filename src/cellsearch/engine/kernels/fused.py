"""Generated Triton kernels that run a layer of any cell over a window: few launches a step.

Eagerly, a timestep runs each matmul and every activation, product and sum as its own kernel,
forward and backward, each reading and writing whole (K, B, n) tensors: at the paper's sizes that
is ~30 small kernels per step, and at a 20-row minibatch their launches, not their arithmetic,
bound the time. Here each stretch of elementwise work between a cell's matmul groups (an LSTM has
one, a GRU two) becomes a `Segment`, and every segment two kernels generated from the graph:

- forward: forms the products of the matmul groups just before it (`tl.dot` over the operand,
  plus the static addends `W_x x + b` computed for the whole window beforehand), stores them for
  the backward, then does the elementwise work and writes only what later steps read;
- backward: recomputes the forward values from the stored inputs (cheaper than storing them) and
  writes every input's gradient, a matmul group's whole product in one buffer.

`run_fused` replaces `plan.run` (a step at a time under autograd) with one autograd node per
layer and window (`_FusedSequence`) that schedules the backward itself: per step, one kernel per
segment and one `baddbmm_` per group adding the operand's gradient in place (for the narrow
groups of small populations, the backward kernel of the segment defining the operand adds it);
the recurrent weights' gradients then come from one batched matmul over all steps. An LSTM step
is one kernel forward and two backward. The derivatives are the ones torch uses (tanh: 1 - y²,
sigmoid: y(1 - y), relu: 0 at 0; `cells/ops.py`), so the fused and eager engines agree to float
rounding (and to TF32's, where torch's matmuls use TF32). The statements and their reverse mode
come from `codegen`, which the persistent kernels share.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from cellsearch.cells.equations import node_texts
from cellsearch.cells.graph import Node
from cellsearch.engine.kernels import codegen, persistent
from cellsearch.engine.kernels.codegen import (
    Notes,
    Term,
    block_size,
    check_first_backward,
    forward_statement,
    fused_sum_names,
    gradient_statement,
    input_width,
    item_reads,
    matmul_precision,
    strided,
    total,
)
from cellsearch.engine.nn import parameter_shape
from cellsearch.engine.plan import (
    MatmulGroup,
    Plan,
    Sum,
    plan,
    pre_name,
    run,
    window_inputs,
)


@dataclass(frozen=True)
class Read:
    """A segment reads value `name` from chunk `chunk` of argument `argument`."""

    name: str
    argument: int
    chunk: int


@dataclass(frozen=True)
class Segment:
    """Consecutive elementwise loop items, run as one kernel per step forward and one backward.

    `arguments` are the tensors it reads: value names, or `@operand` for the whole product of
    the matmul group on that operand (`chunks` wide). Its forward kernel also forms the products
    of the groups just before it (`computes`: argument index and group), storing them whole for
    later reads and the backward. `outputs` are the values defined (or, for a new state that no
    item defines, copied) here that later items or the new state read. `accumulate[i]`: the
    backward adds argument i's gradient to what is there, rather than storing it.
    """

    items: tuple[Sum | Node, ...]
    arguments: tuple[str, ...]
    chunks: tuple[int, ...]
    reads: tuple[Read, ...]
    outputs: tuple[str, ...]
    computes: tuple[tuple[int, MatmulGroup], ...]
    accumulate: tuple[bool, ...]


def product_name(operand: str) -> str:
    return f"@{operand}"


@functools.lru_cache(maxsize=256)  # bounded: a long search meets thousands of graphs
def fused_loop(plan_: Plan) -> tuple[MatmulGroup | Segment, ...]:
    """`plan_.loop` with every run of elementwise items between matmul groups made a Segment,
    and a last segment wherever a new state is a matmul's product or a static value (so every
    new state comes out of a kernel)."""
    fused_sums = fused_sum_names(plan_)
    chunk_of: dict[str, tuple[str, int]] = {}  # group member -> (product, chunk)
    width: dict[str, int] = {}  # product -> chunks
    runs: list[MatmulGroup | list] = []
    for item in plan_.loop:
        if isinstance(item, MatmulGroup):
            runs.append(item)
            width[product_name(item.operand)] = len(item.members)
            for index, member in enumerate(item.members):
                chunk_of[member] = (product_name(item.operand), index)
        elif runs and isinstance(runs[-1], list):
            runs[-1].append(item)
        else:
            runs.append([item])
    defined = {item.name for run in runs if isinstance(run, list) for item in run}
    copied = [name for name in plan_.graph.outputs if name not in defined]
    if copied and not (runs and isinstance(runs[-1], list)):
        runs.append([])

    def later_reads(position: int) -> set[str]:
        names = set(plan_.graph.outputs)
        for later in runs[position + 1:]:
            for item in (later if isinstance(later, list) else [later]):
                names.update(item_reads(item, fused_sums))
        return names

    segments: list[tuple[list, list[str], list[int], list[Read], list[str], list]] = []
    loop: list = []
    pending: list[MatmulGroup] = []  # groups whose product the next segment forms

    def add_segment(run: list, extra: list[str], needed: set[str]) -> None:
        nonlocal pending
        arguments: list[str] = []
        chunks: list[int] = []

        def argument(source: str) -> int:
            if source not in arguments:
                arguments.append(source)
                chunks.append(width.get(source, 1))
            return arguments.index(source)

        computes = [(argument(product_name(g.operand)), g) for g in pending]
        pending = []
        here = {item.name for item in run}
        reads: list[Read] = []
        for name in [n for item in run for n in item_reads(item, fused_sums)] + extra:
            if name in here or any(r.name == name for r in reads):
                continue
            source, chunk = chunk_of.get(name, (name, 0))
            reads.append(Read(name, argument(source), chunk))
        outputs = [item.name for item in run if item.name in needed] + extra
        loop.append(len(segments))
        segments.append((run, arguments, chunks, reads, outputs, computes))

    for position, stretch in enumerate(runs):
        if isinstance(stretch, MatmulGroup):
            if any(stretch.operand in g.members for g in pending):
                # Its operand is another pending group's product, which one kernel cannot both
                # store and read (other programs store the columns it needs): form those first.
                add_segment([], [], set())
            loop.append(stretch)
            pending.append(stretch)
            continue
        add_segment(stretch, copied if position == len(runs) - 1 else [], later_reads(position))

    # A product's gradient is stored plainly by the one segment reading all its chunks, and
    # accumulated (into zeros) when several segments share it.
    readers: dict[str, list[tuple[int, int]]] = {}  # product -> (segment, chunk) reads
    for index, (_, arguments, _, reads, _, _) in enumerate(segments):
        for read in reads:
            readers.setdefault(arguments[read.argument], []).append((index, read.chunk))

    operands = {chunk_of[g.operand][0] for g in plan_.loop
                if isinstance(g, MatmulGroup) and g.operand in chunk_of}

    def accumulates(index: int, source: str) -> bool:
        if source not in width or source in operands:  # (a later matmul adds to an operand's)
            return True
        reads = readers.get(source, [])
        return ({i for i, _ in reads} != {index}
                or sorted(c for _, c in reads) != list(range(width[source])))

    built = [
        Segment(
            items=tuple(run), arguments=tuple(arguments), chunks=tuple(chunks),
            reads=tuple(reads), outputs=tuple(outputs), computes=tuple(computes),
            accumulate=tuple(accumulates(index, a) for a in arguments),
        )
        for index, (run, arguments, chunks, reads, outputs, computes) in enumerate(segments)
    ]
    return tuple(built[item] if isinstance(item, int) else item for item in loop)


@dataclass(frozen=True)
class OperandGradient:
    """A matmul group whose operand's gradient, g_product @ W^T, the backward kernel of the
    segment that defines the operand adds as it loads that output's gradient (in place of a
    `baddbmm_` a step: at small populations, launches bound the time). `output` indexes the
    segment's outputs; the group reads the value at the next step (a new state, `next_step`) or
    at the same step (a value defined earlier in it)."""

    output: int
    operand: str
    chunks: int
    next_step: bool


# Where adding the operands' gradients in the backward kernels measured faster than cuBLAS (H100,
# one layer's window, forward and backward). A program reduces over all of a group's chunks one
# after another: for wide groups cuBLAS's split reduction wins (an LSTM's 4-chunk group, K=1,
# n=171: 950 µs against 820 µs; a GRU's groups of 2 and 1, n=215: 1073 against 1219). And weights
# that no longer stay in the L2 cache stream faster through cuBLAS (the GRU at K=32, 18 MB:
# 2209 against 2524 µs; at K=128, 71 MB: 7880 against 7391 µs).
OPERAND_GRADIENT_CHUNKS = 2
OPERAND_GRADIENT_BYTES = 32 * 2**20


@functools.lru_cache(maxsize=256)
def operand_gradients(plan_: Plan) -> dict[int, tuple[OperandGradient, ...]]:
    """Per position of a Segment in `fused_loop(plan_)`, the OperandGradients its backward
    kernel adds. A group whose operand no segment defines (a window input, another group's
    product, the initial state at step 0), or wider than OPERAND_GRADIENT_CHUNKS, keeps its
    `baddbmm_`."""
    graph = plan_.graph
    loop = fused_loop(plan_)
    definer = {name: (position, index) for position, item in enumerate(loop)
               if isinstance(item, Segment) for index, name in enumerate(item.outputs)}
    found: dict[int, list[OperandGradient]] = {}
    for group in loop:
        if not isinstance(group, MatmulGroup) or len(group.members) > OPERAND_GRADIENT_CHUNKS:
            continue
        operand, next_step = group.operand, group.operand in graph.states
        if next_step:
            operand = graph.outputs[graph.states.index(group.operand)]
            if graph.outputs.count(operand) > 1:  # (one history holds it: keep it simple)
                continue
        if operand in definer:
            position, index = definer[operand]
            found.setdefault(position, []).append(
                OperandGradient(index, group.operand, len(group.members), next_step))
    return {position: tuple(gradients) for position, gradients in found.items()}


# -- code generation ------------------------------------------------------------------------------

def kernel_source(segment: Segment, dot: bool = True,
                  gradients: tuple[OperandGradient, ...] = (), notes: Notes = None) -> str:
    """Python source of a module with `forward_kernel` and `backward_kernel` for `segment`.

    Both run on a grid of (member, block of BJ units, block of BB rows); every tensor is passed
    as a pointer and its (member, row, column) strides, one timestep of a window's buffer. With
    `dot`, the forward forms the products of `segment.computes` itself; without, it reads them.
    The backward adds `gradients` (`operand_gradients`) to its outputs' gradients. With `notes`
    (`equations.node_texts`), each line says which graph value it computes (`codegen.commenter`).
    """
    comment = codegen.commenter(notes)
    var: dict[str, str] = {}
    for index, read in enumerate(segment.reads):
        var[read.name] = f"v{index}"
    for index, item in enumerate(segment.items):
        var[item.name] = f"y{index}"
    computes = segment.computes if dot else ()
    computed = {argument for argument, _ in computes}

    def at(pointer: str, column: str = "j") -> str:
        return f"{pointer} + k * {pointer}_sk + b * {pointer}_sb + ({column}) * {pointer}_sn"

    def load(pointer: str, column: str = "j") -> str:
        return f"tl.load({at(pointer, column)}, mask=mask, other=0.0)"

    def pointer(name: str) -> str:
        return f"{name}, {name}_sk, {name}_sb, {name}_sn"

    def column(chunk: int) -> str:
        return f"j + {chunk} * n" if chunk else "j"

    # Forward: each product the segment forms, one accumulator per chunk, reduced over the
    # operand's n columns BR at a time; then the static addends and a store of the whole product.
    products = []
    for g, (argument, group) in enumerate(computes):
        chunks = range(len(group.members))
        products += [f"    p{argument}_{c} = tl.full([BB, BJ], 0.0, x{g}.dtype.element_ty)"
                     for c in chunks]
        products += [
            "    for r0 in range(0, n, BR):",
            "        r = r0 + tl.arange(0, BR)",
            f"        u = tl.load(x{g} + k * x{g}_sk + b * x{g}_sb + r[None, :] * x{g}_sn, "
            "mask=(b < B) & (r[None, :] < n), other=0.0)",
        ]
        products += [
            f"        p{argument}_{c} += tl.dot(u, tl.load(w{g} + k * w{g}_sk + r[:, None] * w{g}_sr"
            f" + ({column(c)}) * w{g}_sc, mask=(r[:, None] < n) & (j < n), other=0.0), "
            "input_precision=PRECISION)"
            for c in chunks
        ]
        for c in chunks:
            if group.fused_sums[c] is not None:  # the chunk's static addends
                products.append(f"    p{argument}_{c} += {load(f's{g}', column(c))}")
            products.append(f"    tl.store({at(f'a{argument}', column(c))}, p{argument}_{c}, mask=mask)")

    loads = [f"    {var[r.name]} = "
             + (f"p{r.argument}_{r.chunk}" if r.argument in computed
                else load(f"a{r.argument}", column(r.chunk))) + comment(r.name)
             for r in segment.reads]
    body = [forward_statement(item, var, notes).line("    ") for item in segment.items]

    arguments = ", ".join(pointer(f"a{i}") for i in range(len(segment.arguments)))
    index_lines = [
        "    k = tl.program_id(0).to(tl.int64)",
        "    j = tl.program_id(1) * BJ + tl.arange(0, BJ)[None, :]",
        "    b = tl.program_id(2) * BB + tl.arange(0, BB)[:, None]",
        "    mask = (b < B) & (j < n)",
    ]
    sizes = "B, n, BB: tl.constexpr, BJ: tl.constexpr"
    outputs = ", ".join(pointer(f"o{i}") for i in range(len(segment.outputs)))
    operands = ", ".join(
        f"{pointer(f'x{g}')}, w{g}, w{g}_sk, w{g}_sr, w{g}_sc, {pointer(f's{g}')}"
        for g in range(len(computes)))
    forward = [
        "@triton.jit",
        f"def forward_kernel({', '.join(filter(None, [arguments, outputs, operands]))}, {sizes}, "
        "BR: tl.constexpr, PRECISION: tl.constexpr):",
        *index_lines, *products, *loads, *body,
        *(f"    tl.store({at(f'o{i}')}, {var[name]}, mask=mask)"
          for i, name in enumerate(segment.outputs)),
    ]

    # Reverse mode over the segment: each value's gradient is the sum of its terms.
    terms: dict[str, list[Term]] = {name: [] for name in var}
    gradient_loads = []
    for i, name in enumerate(segment.outputs):
        gradient_loads.append(f"    d{i} = {load(f'go{i}')}" + comment(name, "d "))
        terms[name].append(Term(f"d{i}", frozenset({f"d{i}"})))
    for q, gradient in enumerate(gradients):  # + g_product @ W^T, R (n, or 0: none) at a time
        gradient_loads += [
            f"    for r0 in range(0, R{q}, BR):",
            "        r = r0 + tl.arange(0, BR)",
        ]
        gradient_loads += [
            f"        d{gradient.output} += tl.dot(tl.load(gp{q} + k * gp{q}_sk + b * gp{q}_sb + "
            f"(r[None, :] + {c} * n) * gp{q}_sn, mask=(b < B) & (r[None, :] < n), other=0.0), "
            f"tl.load(w{q} + k * w{q}_sk + j * w{q}_sr + (r[:, None] + {c} * n) * w{q}_sc, "
            "mask=(r[:, None] < n) & (j < n), other=0.0), input_precision=PRECISION)"
            for c in range(gradient.chunks)
        ]
    gradient_body = [statement.line("    ") for item in reversed(segment.items)
                     if (statement := gradient_statement(item, var, terms, notes))]
    gradient_stores = []
    for r in segment.reads:
        target = at(f"ga{r.argument}", column(r.chunk))
        gradient = total(terms[r.name])
        if segment.accumulate[r.argument]:
            if gradient:  # a read nothing depends on adds nothing
                gradient_stores.append(
                    f"    tl.store({target}, tl.load({target}, mask=mask, other=0.0) + "
                    f"{gradient}, mask=mask)")
        else:
            gradient_stores.append(
                f"    tl.store({target}, {gradient or 'tl.full([BB, BJ], 0.0, tl.float32)'}, mask=mask)")
    gradient_outputs = ", ".join(pointer(f"go{i}") for i in range(len(segment.outputs)))
    gradient_arguments = ", ".join(pointer(f"ga{i}") for i in range(len(segment.arguments)))
    gradient_operands = ", ".join(f"{pointer(f'gp{q}')}, w{q}, w{q}_sk, w{q}_sr, w{q}_sc, R{q}"
                                  for q in range(len(gradients)))
    backward_arguments = ", ".join(
        filter(None, [arguments, gradient_outputs, gradient_arguments, gradient_operands]))
    backward_loads = [f"    {var[r.name]} = {load(f'a{r.argument}', column(r.chunk))}"
                      for r in segment.reads]
    backward = [
        "@triton.jit",
        f"def backward_kernel({backward_arguments}, {sizes}"
        + (", BR: tl.constexpr, PRECISION: tl.constexpr):" if gradients else "):"),
        *index_lines, *backward_loads, *body, *gradient_loads, *gradient_body, *gradient_stores,
    ]
    header = [
        "# Generated by cellsearch.engine.kernels.fused from a cell graph; do not edit.",
        "import triton",
        "import triton.language as tl",
    ]
    return "\n".join([*header, "", "", *forward, "", "", *backward, ""])


# -- loading and launching ------------------------------------------------------------------------

_source = functools.lru_cache(maxsize=256)(kernel_source)


def kernels(segment: Segment, dot: bool = True, gradients: tuple[OperandGradient, ...] = ()):
    """The module holding the segment's two kernels."""
    return codegen.load_module(_source(segment, dot, gradients), "segment")


def _blocks(B: int, n: int) -> dict[str, int]:
    """Tile sizes: up to 64 rows of a minibatch in one block, BJ units."""
    return {"BB": min(64, block_size(B)), "BJ": 32}


# Forming a step's products inside the segment's kernel saves launches, which bound small
# populations; cuBLAS streams large populations' weights faster (H100, arith's LSTM: 180 µs a step
# at K=512 against 241 µs for the best tl.dot tiling, equal at K=128). And each program reduces
# over its group's chunks, 32 units at a time, one after another: a chain longer than
# IN_KERNEL_CHAIN, with fewer programs than IN_KERNEL_PROGRAMS to run beside it, is slower than
# cuBLAS's reduction (H100, an LSTM layer's window, 4 chunks, at K=1: n=122, 776 µs against 730;
# n=171, 820 against 737; n=247, 909 against 788; n=171 at K=4 (24 programs): 1110 against 1023,
# K=8: 1222 against 1191, K=16 (96 programs): 1412 against 1490, K=32: 2035 against 2150; a GRU's
# chain of 2 chunks, n=215, K=1: 1073 against 1310).
IN_KERNEL_PRODUCTS_BYTES = 96 * 2**20
IN_KERNEL_CHAIN = 15
IN_KERNEL_PROGRAMS = 64


def in_kernel_products(weights, n: int) -> bool:
    """Whether the segments' kernels form the products of `weights`, each (K, n, chunks * n)
    (see IN_KERNEL_PRODUCTS_BYTES)."""
    weights = list(weights)
    if _bytes(weights) > IN_KERNEL_PRODUCTS_BYTES:
        return False
    blocks = -(-n // 32)
    chain = max((w.shape[-1] // n for w in weights), default=0) * blocks
    return chain <= IN_KERNEL_CHAIN or weights[0].shape[0] * blocks >= IN_KERNEL_PROGRAMS


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(eq=False)
class _Window:
    """Where each value of a window lives, by name and timestep: states in (K, T+1, B, n)
    histories (step t reads index t and writes t+1), products (K, T, B, m*n), other stored values
    and the step inputs (K, T, B, w). `grad` is the same map for their gradients."""

    plan: Plan
    states: dict[str, torch.Tensor]  # state name -> history
    products: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]

    @functools.cached_property
    def members(self) -> dict[str, tuple[str, int]]:  # matmul node -> (its group's operand, chunk)
        return {m: (g.operand, c) for g in self.plan.loop if isinstance(g, MatmulGroup)
                for c, m in enumerate(g.members)}

    @functools.cached_property
    def widths(self) -> dict[str, int]:  # operand -> chunks of its group's product
        return {g.operand: len(g.members) for g in self.plan.loop if isinstance(g, MatmulGroup)}

    def at(self, name: str, t: int) -> torch.Tensor:
        """Where step t reads value `name`. A new state that a matmul or the static part computes
        is read where they put it (a segment copies it into the history, `output_at`)."""
        graph = self.plan.graph
        if name in self.members:  # a chunk of a product (the operand of a later matmul)
            operand, chunk = self.members[name]
            n = self.products[operand].shape[-1] // self.widths[operand]
            return self.products[operand][:, t, :, chunk * n:(chunk + 1) * n]
        if name in self.inputs:
            return self.inputs[name][:, t]
        if name in self.states:
            return self.states[name][:, t]
        if name.startswith("@"):
            return self.products[name[1:]][:, t]
        if name in graph.outputs:
            return self.states[graph.states[graph.outputs.index(name)]][:, t + 1]
        return self.values[name][:, t]

    def output_at(self, name: str, t: int) -> torch.Tensor:
        """Where a segment writes value `name` of step t: a new state into its history."""
        graph = self.plan.graph
        if name in graph.outputs:
            return self.states[graph.states[graph.outputs.index(name)]][:, t + 1]
        return self.values[name][:, t]

    def every_step(self, name: str) -> torch.Tensor:
        """(K, T, B, n): the value at every step."""
        graph = self.plan.graph
        if name in self.members:
            operand, chunk = self.members[name]
            n = self.products[operand].shape[-1] // self.widths[operand]
            return self.products[operand][..., chunk * n:(chunk + 1) * n]
        if name in self.states:
            return self.states[name][:, :-1]
        if name in graph.outputs:
            return self.states[graph.states[graph.outputs.index(name)]][:, 1:]
        return self.values[name]


class _FusedSequence(torch.autograd.Function):
    """One layer over one window: the inputs of `plan.window_inputs`, the group weights and
    the initial state in; every step's h and the final state out."""

    @staticmethod
    def forward(ctx, plan_: Plan, T: int, dot: bool, names: tuple[str, ...],
                operands: tuple[str, ...], *tensors):
        graph = plan_.graph
        inputs = dict(zip(names, tensors))
        weights = dict(zip(operands, tensors[len(names):]))
        state = tensors[len(names) + len(operands):]
        K, B, n = state[0].shape
        loop = fused_loop(plan_)
        empty = state[0].new_empty
        histories = {}
        for name, value in zip(graph.states, state):
            histories[name] = empty(K, T + 1, B, n)
            histories[name][:, 0] = value
        inputs = {name: v.expand(K, T, B, input_width(name, plan_, n)) for name, v in inputs.items()}

        def products(group: MatmulGroup) -> torch.Tensor:
            # cuBLAS adds each step's product to the static addends in place: one contiguous
            # copy a window, where baddbmm's `out=` would copy them step by step, more slowly
            pre = pre_name(group.operand)
            if not dot and pre in inputs:
                return inputs[pre].clone(memory_format=torch.contiguous_format)
            return empty(K, T, B, len(group.members) * n)

        window = _Window(
            plan_, histories,
            products={g.operand: products(g) for g in loop if isinstance(g, MatmulGroup)},
            values={name: empty(K, T, B, n) for s in loop if isinstance(s, Segment)
                    for name in s.outputs if name not in graph.outputs},
            inputs=inputs,
        )
        precision = matmul_precision(state[0])
        blocks = _blocks(B, n)
        grid = (K, -(-n // blocks["BJ"]), -(-B // blocks["BB"]))
        segments = [s for s in loop if isinstance(s, Segment)]
        for t in range(T):
            for segment in segments:
                dots = []
                for _, group in segment.computes:
                    pre = pre_name(group.operand)
                    operand, weight = window.at(group.operand, t), weights[group.operand]
                    product = window.at(product_name(group.operand), t)
                    addends = window.at(pre, t) if pre in inputs else product  # (unread then)
                    if dot:
                        dots += [*strided(operand), *strided(weight), *strided(addends)]
                    elif pre in inputs:
                        product.baddbmm_(operand, weight)
                    else:
                        torch.bmm(operand, weight, out=product)
                kernels(segment, dot).forward_kernel[grid](
                    *(v for a in segment.arguments for v in strided(window.at(a, t))),
                    *(v for o in segment.outputs for v in strided(window.output_at(o, t))),
                    *dots, B, n, **blocks, BR=32, PRECISION=precision)
        ctx.plan, ctx.names, ctx.operands, ctx.window, ctx.dot = plan_, names, operands, window, dot
        ctx.shapes = [v.shape for v in tensors[:len(names)]]
        ctx.save_for_backward(*weights.values())
        h = histories[graph.states[0]]
        return (h[:, 1:], *(histories[name][:, T].clone() for name in graph.states))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs, *grad_final):
        check_first_backward(ctx.window)
        plan_, window = ctx.plan, ctx.window
        graph = plan_.graph
        weights = dict(zip(ctx.operands, ctx.saved_tensors))
        loop = fused_loop(plan_)
        h = window.states[graph.states[0]]
        K, T, B, n = h.shape[0], h.shape[1] - 1, h.shape[2], h.shape[3]
        zeros = h.new_zeros
        # a group's static addends get the gradient of its product
        addends = {pre_name(g.operand): g.operand for g in loop if isinstance(g, MatmulGroup)}
        shared = {a for s in loop if isinstance(s, Segment)
                  for a, added in zip(s.arguments, s.accumulate) if added}
        grad = _Window(
            plan_,
            {name: zeros(K, T + 1, B, n) for name in graph.states},
            {op: (zeros if product_name(op) in shared else h.new_empty)(p.shape)
             for op, p in window.products.items()},
            {name: zeros(v.shape) for name, v in window.values.items()},
            {name: zeros(v.shape) for name, v in window.inputs.items() if name not in addends},
        )
        if grad_outputs is not None:
            grad.states[graph.states[0]][:, 1:] += grad_outputs
        for name, g in zip(graph.states, grad_final):
            if g is not None:
                grad.states[name][:, T] += g
        blocks = _blocks(B, n)
        grid = (K, -(-n // blocks["BJ"]), -(-B // blocks["BB"]))
        # With `dot`, the kernel defining a matmul's operand adds the operand's share of the
        # product's gradient; a state's value at step 0 has no such kernel.
        small = _bytes(weights.values()) <= OPERAND_GRADIENT_BYTES
        added = operand_gradients(plan_) if ctx.dot and small else {}
        by_kernel = {g.operand: g for gradients in added.values() for g in gradients}
        extras = {"BR": 32, "PRECISION": matmul_precision(h)}  # (kernels that add gradients)
        for t in reversed(range(T)):
            for position, item in reversed(list(enumerate(loop))):
                if isinstance(item, MatmulGroup):  # the operand's share of the product's gradient
                    fused = by_kernel.get(item.operand)
                    if fused is None or (fused.next_step and t == 0):
                        grad.at(item.operand, t).baddbmm_(grad.products[item.operand][:, t],
                                                          weights[item.operand].transpose(1, 2))
                    continue
                if not item.reads:  # (a segment that only forms products)
                    continue
                gradients = added.get(position, ())
                kernels(item, ctx.dot, gradients).backward_kernel[grid](
                    *(v for a in item.arguments for v in strided(window.at(a, t))),
                    *(v for o in item.outputs for v in strided(grad.output_at(o, t))),
                    *(v for a in item.arguments for v in strided(grad.at(a, t))),
                    *(v for g in gradients for v in _operand_gradient(g, grad, weights, t, T, n)),
                    B, n, **blocks, **(extras if gradients else {}))
        grad_inputs = [
            (grad.products[addends[name]] if name in addends else grad.inputs[name])
            .sum_to_size(shape)
            for name, shape in zip(ctx.names, ctx.shapes)
        ]
        grad_weights = [  # dW = sum_t v_t^T g_t, all steps in one batched matmul
            torch.bmm(window.every_step(op).reshape(K, T * B, n).transpose(1, 2),
                      grad.products[op].view(K, T * B, -1))
            for op in ctx.operands
        ]
        grad_state = [grad.states[name][:, 0] for name in graph.states]
        ctx.window = None  # the window's buffers are not needed any more
        return (None, None, None, None, None, *grad_inputs, *grad_weights, *grad_state)


def _operand_gradient(gradient: OperandGradient, grad: _Window, weights, t: int, T: int,
                      n: int) -> list:
    """A backward kernel's arguments for `gradient` at step t: the product's gradient at the
    step that reads the operand, the weight and R, the reduction's length (0 past the window)."""
    step = t + gradient.next_step
    weight = weights[gradient.operand]
    return [*strided(grad.products[gradient.operand][:, min(step, T - 1)]), *strided(weight),
            n if step < T else 0]


MODES = ("persistent", "dot", "cublas")


def mode_for(B: int, n: int, weights) -> str:
    """How `run_fused` runs a layer: a persistent kernel per member when its state fits one
    program (`persistent.fits`), else per-step kernels that form the products themselves for
    small populations (`in_kernel_products`) or read cuBLAS's."""
    if persistent.fits(B, n):
        return "persistent"
    return "dot" if in_kernel_products(weights, n) else "cublas"


def run_fused(
    plan_: Plan,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    mode: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`plan.run` with the layer's recurrence in generated kernels, run as `mode` (one of
    MODES; default `mode_for`): per step one kernel per segment forward, and backward one per
    segment plus one matmul per group; or, persistent, two kernels for the whole window."""
    inputs, weights = window_inputs(plan_, params, x)
    K, T, B, n = x.shape
    mode = mode or mode_for(B, n, weights.values())
    arguments = (tuple(inputs), tuple(weights), *inputs.values(), *weights.values(), *state)
    if mode == "persistent":
        outputs, *final = persistent.PersistentSequence.apply(plan_, T, *arguments)
    elif mode in ("dot", "cublas"):
        outputs, *final = _FusedSequence.apply(plan_, T, mode == "dot", *arguments)
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return outputs, tuple(final)


def generated_sources(graph, mode: str) -> list[tuple[str, str]]:
    """The kernels a layer of `graph` runs in `mode` (one of MODES), as (title, Python source):
    for "persistent" one module, else one per segment of a step (`cellsearch cells kernels`)."""
    plan_ = plan(graph)
    if mode == "persistent":
        params = {node.param: torch.zeros(1, *parameter_shape(node, 1))
                  for node in graph.parameters}
        names = tuple(window_inputs(plan_, params, torch.zeros(1, 1, 1, 1))[0])
        return [("persistent: the whole window, one program per member",
                 persistent.kernel_source(plan_, names, notes=node_texts(graph)))]
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    segments = [item for item in fused_loop(plan_) if isinstance(item, Segment)]
    return [(f"{mode}: segment {index + 1} of {len(segments)} of a step, computing "
             f"{', '.join(item.name for item in segment.items) or 'products only'}",
             kernel_source(segment, dot=mode == "dot", notes=node_texts(graph)))
            for index, segment in enumerate(segments)]


_USABLE_LOCK = threading.Lock()


def usable(device: str) -> bool:
    """Whether generated kernels work on `device`: Triton imports, and a short LSTM sequence
    through them gives the eager step's values and gradients. Checked once per process; when not,
    training falls back to the eager step with a warning rather than fail every run."""
    with _USABLE_LOCK:  # populations start in threads: one check, not one each
        return _usable(device)


@functools.cache
def _usable(device: str) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    from cellsearch.cells import zoo

    graph = zoo.get("lstm")

    def sequence(runner):
        # Its own generator and no global switches: training threads may be running. Weights
        # small enough that TF32's rounding (in cuBLAS and tl.dot alike) stays within the tolerance.
        generator = torch.Generator().manual_seed(0)
        params = {node.param: torch.randn(2, *parameter_shape(node, 8), generator=generator)
                  * 0.3 for node in graph.parameters}
        leaves = [torch.randn(2, 3, 4, 8, generator=generator), *params.values()]
        leaves = [t.to(device).requires_grad_() for t in leaves]
        x, params = leaves[0], dict(zip(params, leaves[1:]))
        state = tuple(torch.zeros(2, 4, 8, device=device) for _ in graph.states)
        outputs, _ = runner(plan(graph), params, x, state)
        return [outputs, *torch.autograd.grad(outputs.square().sum(), leaves)]

    try:
        # The persistent kernels use everything the per-step ones do (loads, stores, tl.dot)
        # and more; checking one mode keeps this check's compilations few.
        eager = sequence(run)
        fused = sequence(functools.partial(run_fused, mode="persistent"))
        if all(torch.allclose(a, b, rtol=2e-2, atol=2e-3) for a, b in zip(eager, fused)):
            return True
        problem = "they disagree with the eager step"
    except Exception as error:  # noqa: BLE001 - any failure means: do not use them
        problem = f"{type(error).__name__}: {error}"
    warnings.warn(f"generated Triton kernels are not usable on {device} ({problem}); "
                  "training uses the eager step", RuntimeWarning, stacklevel=3)
    return False
