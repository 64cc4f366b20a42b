"""Compile a `CellGraph` into a plan that runs a population of K independent copies of the cell
over a whole sequence with few, large tensor operations.

The plan is built once per graph and is pure data; `run` executes it on tensors. What it does
for speed:

- Nodes that depend only on `x`, biases and constants ("static" nodes) are computed for all
  timesteps at once before the time loop; the matrices applied to the same static operand become
  one batched matmul over all timesteps.
- Sums are flattened: `W_xi x + W_hi h + b_i` splits into a static part (`W_xi x + b_i`,
  precomputed) and a recurrent part (`W_hi h`).
- Matrices applied to the same recurrent operand (the four `W_h*` of the LSTM) become one
  batched matmul per step, and the static parts of the sums they feed are added by that same
  call (`baddbmm`), so an LSTM step is one matmul plus elementwise work.
- When every chunk's static addend is one matrix applied to the same timed operand plus terms
  constant over time (an LSTM's `W_x* x + b_*`), the addends of all chunks come from one
  batched matmul written straight in the layout the recurrent matmul adds (`StaticPart`): no
  per-gate sums, concatenation or, going backward, slicing of (K, T, B, m*n) tensors.
- The gradient of each recurrent matrix is formed once per sequence, by one batched matmul over
  all timesteps, rather than accumulated step by step (`_WeightSink`).

Shapes: sequences are (K, T, B, n), states (K, B, n), a matrix (K, n, n) acting as `v @ W.T`,
a bias (K, n). This module knows nothing of modules, tasks or training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from cellsearch.cells import ops
from cellsearch.cells.graph import INPUT, CellGraph, Node, is_anonymous
from cellsearch.engine.products import Product, in_torch

_ACTIVATIONS = {  # from the operation table; no torch function: the identity
    op.name: getattr(torch, op.torch_function) if op.torch_function else (lambda v: v)
    for op in ops.OPERATIONS if op.kind == "activation"
}


@dataclass(frozen=True)
class StaticPart:
    """A matmul group's static addends as one batched matmul: chunk i is `matrices[i]` applied to
    `operand` plus the signed, time-constant `constants[i]`."""

    operand: str
    matmuls: tuple[str, ...]  # the static matmul nodes it computes, one per chunk
    matrices: tuple[str, ...]  # their parameters
    constants: tuple[tuple[tuple[int, str], ...], ...]


@dataclass(frozen=True)
class MatmulGroup:
    """Matrices applied to one recurrent operand: one `bmm` (or `baddbmm`) per step.

    `members[i]` is the matmul node whose result is chunk i; `fused_sums[i]` names the sum node
    whose static part is added into chunk i by the same call (or None); `static_part`, when
    set, computes all those static parts at once.
    """

    operand: str
    members: tuple[str, ...]
    params: tuple[str, ...]
    fused_sums: tuple[str | None, ...]
    static_part: StaticPart | None = None


@dataclass(frozen=True)
class Sum:
    """A flattened chain of `+`/`-`: static terms are precomputed, recurrent ones added per step."""

    name: str
    static_terms: tuple[tuple[int, str], ...]  # (sign, node)
    recurrent_terms: tuple[tuple[int, str], ...]


@dataclass(frozen=True, eq=False)  # hashed by identity: a cheap cache key for `fused.fused_loop`
class Plan:
    graph: CellGraph
    static: tuple[Node, ...]  # static nodes in topological order (matmuls included)
    timed: frozenset[str]  # static nodes that depend on x (the others are constant over time)
    x_groups: tuple[tuple[str, tuple[str, ...]], ...]  # static operand -> its matmul nodes
    loop: tuple[MatmulGroup | Sum | Node, ...]  # per-step instructions in order
    loop_reads: tuple[str, ...]  # static values the loop reads directly (not through sums)


def plan(graph: CellGraph) -> Plan:
    by_name = {node.name: node for node in graph.nodes}
    uses = graph.consumers()
    static: set[str] = {INPUT}
    timed: set[str] = {INPUT}
    for node in graph.nodes:
        if all(i in static for i in node.inputs):
            static.add(node.name)
            if any(i in timed for i in node.inputs):
                timed.add(node.name)

    def read_only_by_its_sum(name: str) -> bool:
        """Read by one node only, and not also a new state."""
        return len(uses[name]) == 1 and name not in graph.outputs

    # Flatten recurrent +/- chains through anonymous, single-use +/- nodes.
    absorbed: set[str] = set()
    sums: dict[str, Sum] = {}

    def terms(name: str, sign: int) -> list[tuple[int, str]]:
        node = by_name.get(name)
        if node is None or node.op not in ("add", "sub"):
            return [(sign, name)]
        right_sign = sign if node.op == "add" else -sign
        return [*expand(node.inputs[0], sign), *expand(node.inputs[1], right_sign)]

    def expand(name: str, sign: int) -> list[tuple[int, str]]:
        node = by_name.get(name)
        if (node is not None and node.op in ("add", "sub") and is_anonymous(name)
                and read_only_by_its_sum(name)):
            absorbed.add(name)
            return terms(name, sign)
        return [(sign, name)]

    for node in reversed(graph.nodes):  # outermost sums first, so inner ones get absorbed
        if node.op in ("add", "sub") and node.name not in static and node.name not in absorbed:
            flat = terms(node.name, 1)
            sums[node.name] = Sum(
                node.name,
                tuple(t for t in flat if t[1] in static),
                tuple(t for t in flat if t[1] not in static),
            )

    # Group recurrent matmuls by operand; fuse a sum's static part into a matmul that is the sum's
    # first recurrent term, when that matmul is read only by the sum (not also a new state) and
    # is added (sign +1).

    groups: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.op == "matmul" and node.name not in static:
            groups.setdefault(node.inputs[0], []).append(node)
    fused_into: dict[str, str] = {}  # matmul -> sum
    for total in sums.values():
        if total.static_terms and total.recurrent_terms:
            sign, first = total.recurrent_terms[0]
            node = by_name.get(first)
            if sign == 1 and node is not None and node.op == "matmul" and read_only_by_its_sum(first):
                fused_into[first] = total.name

    def static_part(fused_sums: list[str | None]) -> StaticPart | None:
        """The group's static addends as one batched matmul, if each is `W X + constants` with
        one X."""
        matrices, constants, operands = [], [], set()
        for name in fused_sums:
            if name is None:
                return None
            matmuls = [(s, t) for s, t in sums[name].static_terms
                       if t in by_name and by_name[t].op == "matmul"
                       and by_name[t].inputs[0] in timed]
            others = [(s, t) for s, t in sums[name].static_terms if (s, t) not in matmuls]
            if (len(matmuls) != 1 or matmuls[0][0] != 1 or not read_only_by_its_sum(matmuls[0][1])
                    or any(t in timed for _, t in others)):
                return None
            matmul = by_name[matmuls[0][1]]
            operands.add(matmul.inputs[0])
            matrices.append(matmul)
            constants.append(tuple(others))
        if len(operands) != 1:
            return None
        return StaticPart(operands.pop(), tuple(m.name for m in matrices),
                          tuple(m.param for m in matrices), tuple(constants))

    loop: list[MatmulGroup | Sum | Node] = []
    emitted_groups: set[str] = set()
    in_static_parts: set[str] = set()  # static matmuls that a StaticPart computes
    for node in graph.nodes:
        if node.name in static or node.name in absorbed:
            continue
        if node.op == "matmul":
            operand = node.inputs[0]
            if operand not in emitted_groups:
                emitted_groups.add(operand)
                members = groups[operand]
                fused_sums = [fused_into.get(m.name) for m in members]
                part = static_part(fused_sums)
                if part is not None:
                    in_static_parts.update(part.matmuls)
                loop.append(MatmulGroup(
                    operand,
                    tuple(m.name for m in members),
                    tuple(m.param for m in members),
                    tuple(fused_sums),
                    part,
                ))
        elif node.name in sums:
            loop.append(sums[node.name])
        else:
            loop.append(node)

    recurrent_reads = set()
    for step in loop:
        if isinstance(step, Node):
            recurrent_reads.update(step.inputs)
        elif isinstance(step, Sum):
            recurrent_reads.update(t for _, t in step.recurrent_terms)
        else:
            recurrent_reads.add(step.operand)
    recurrent_reads.update(graph.outputs)
    x_groups: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op == "matmul" and node.name in static and node.name not in in_static_parts:
            x_groups.setdefault(node.inputs[0], []).append(node.name)
    return Plan(
        graph=graph,
        # (absorbed nodes: their sums read their terms instead)
        static=tuple(n for n in graph.nodes if n.name in static
                     and n.name not in in_static_parts and n.name not in absorbed),
        timed=frozenset(timed),
        x_groups=tuple((k, tuple(v)) for k, v in x_groups.items()),
        loop=tuple(loop),
        loop_reads=tuple(sorted(n for n in recurrent_reads if n in static)),
    )


# -- execution ------------------------------------------------------------------------------------


def static_sum_name(name: str) -> str:
    """The step input holding sum `name`'s static part (when no matmul group adds it)."""
    return f"sum:{name}"


def pre_name(operand: str) -> str:
    """The step input holding the static addends of the matmul group on `operand`."""
    return f"pre:{operand}"


def _transposed_cat(params: dict[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """(K, n, m*n): the matrices of a group side by side, so `v @ result` gives all m products."""
    return torch.cat([params[name].transpose(1, 2) for name in names], dim=2)


def static_values(plan_: Plan, params, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every static node, as (K, T, B, n) if it depends on x, else broadcastable (K, 1, 1, n).
    The matrices applied to one static operand run as one product, at the first of them."""
    [values] = answer_requests([static_requests(plan_, params, x)],
                               lambda products, _: [in_torch(p) for p in products])
    return values


StaticRequests = Generator[list[Product], list[torch.Tensor], dict[str, torch.Tensor]]


def static_requests(plan_: Plan, params, x: torch.Tensor) -> StaticRequests:
    """`static_values` a product at a time: yields the products it needs next and is sent their
    values, so that a mix forms its populations' together (`answer_requests`)."""
    K, T, B, n = x.shape
    values: dict[str, torch.Tensor] = {INPUT: x}
    x_groups = dict(plan_.x_groups)
    params_of = {node.name: node.param for node in plan_.static}
    for node in plan_.static:  # topological: an operand comes before its matmuls
        if node.name in values:
            continue
        if node.op != "matmul":
            values[node.name] = _apply(node, params, values, K)
            continue
        operand, members = node.inputs[0], x_groups[node.inputs[0]]
        # A matrix applied to a constant (a bias, 1) gives a constant: keep it (K, 1, 1, n).
        t, b = (T, B) if operand in plan_.timed else (1, 1)
        source = values[operand].expand(K, t, b, n).reshape(K, t * b, n)
        [product] = yield [Product(source, [params[params_of[m]].transpose(1, 2)
                                            for m in members], [None] * len(members))]
        product = product.view(K, t, b, len(members) * n)
        for index, member in enumerate(members):
            values[member] = product[..., index * n:(index + 1) * n]
    return values


def answer_requests(requests: list[StaticRequests],
                    form: Callable[[list[Product], int], list[torch.Tensor]]) -> list[dict]:
    """Runs `static_requests` generators side by side, round after round, the products all
    ask for in a round formed at once by `form(products, round)`; their values."""
    results: list = [None] * len(requests)
    asked: dict[int, list[Product]] = {}

    def advance(index: int, answer: list[torch.Tensor] | None) -> None:
        try:
            asked[index] = requests[index].send(answer)  # (the first: None, as `next` sends)
        except StopIteration as stop:
            results[index] = stop.value
            asked.pop(index, None)

    for index in range(len(requests)):
        advance(index, None)
    round_ = 0
    while asked:
        formed = iter(form([p for products in asked.values() for p in products], round_))
        for index, products in list(asked.items()):
            advance(index, [next(formed) for _ in products])
        round_ += 1
    return results


def _apply(node: Node, params, values: dict, K: int) -> torch.Tensor:
    op = node.op
    if op == "bias":
        return params[node.param].view(K, 1, 1, -1)
    if op == "one":
        return values[INPUT].new_ones(1, 1, 1, 1)
    if op in _ACTIVATIONS:
        return _ACTIVATIONS[op](values[node.inputs[0]])
    a, b = (values[i] for i in node.inputs)
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise AssertionError(f"unexpected op {op}")


def _signed_sum(terms: list[tuple[int, torch.Tensor]], start: torch.Tensor | None):
    total = start
    for sign, value in terms:
        if total is None:
            total = value if sign > 0 else -value
        else:
            total = total + value if sign > 0 else total - value
    return total


def window_inputs(
    plan_: Plan, params: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What the time loop reads, computed for the whole window before it: the step inputs
    (`step_inputs`) and per recurrent operand its group's matrices side by side, (K, n, m*n)."""
    return step_inputs(plan_, params, x), {
        item.operand: _transposed_cat(params, item.params)
        for item in plan_.loop if isinstance(item, MatmulGroup)}


def step_inputs(plan_: Plan, params: dict[str, torch.Tensor], x: torch.Tensor,
                static: dict[str, torch.Tensor] | None = None,
                parts: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The step inputs by name, each (K, T, B, w) when it depends on x and broadcastable to that
    with a time dimension of 1 otherwise: the static values the loop reads, `pre:<operand>` the
    static addends of a fused matmul group (w = m*n) and `sum:<name>` the static part of a
    sum. `static` (`static_values`) and `parts`, each group's static part by operand
    ((K, T*B, m*n), `static_products`' values), when formed elsewhere (with other populations'
    in one launch, `mixed.run_mixed`)."""
    K, T, B, n = x.shape
    static = static if static is not None else static_values(plan_, params, x)
    if parts is None:
        parts = {operand: in_torch(product)
                 for operand, product in static_products(plan_, params, static).items()}
    inputs = {name: static[name] for name in plan_.loop_reads}
    sum_static: dict[str, torch.Tensor] = {}
    # sums whose static parts a StaticPart computes
    covered = {s for item in plan_.loop if isinstance(item, MatmulGroup)
               and item.static_part for s in item.fused_sums}
    for item in plan_.loop:
        if isinstance(item, Sum) and item.static_terms and item.name not in covered:
            sum_static[item.name] = _signed_sum([(s, static[t]) for s, t in item.static_terms], None)
    fused: set[str] = set(covered)
    for item in plan_.loop:
        if isinstance(item, MatmulGroup) and item.static_part:
            inputs[pre_name(item.operand)] = parts[item.operand].view(K, T, B, -1)
        elif isinstance(item, MatmulGroup) and any(item.fused_sums):
            chunks = [
                sum_static[s].expand(K, T, B, n) if s is not None
                else x.new_zeros(()).expand(K, T, B, n)
                for s in item.fused_sums
            ]
            inputs[pre_name(item.operand)] = torch.cat(chunks, dim=-1)
            fused.update(s for s in item.fused_sums if s is not None)
    for name, part in sum_static.items():
        if name not in fused:
            inputs[static_sum_name(name)] = part
    return inputs


def static_products(plan_: Plan, params: dict[str, torch.Tensor],
                    static: dict[str, torch.Tensor]) -> dict[str, Product]:
    """Per recurrent operand whose group has a static part, that part as one product over the
    window's rows: every chunk's `W X + constants` (`StaticPart`)."""
    found, rows = {}, {}  # rows: each operand's (K, T*B, n) view, one for all its parts
    for item in plan_.loop:
        if not (isinstance(item, MatmulGroup) and item.static_part):
            continue
        part = item.static_part
        operand = static[part.operand]
        K, T, B, n = operand.shape
        if part.operand not in rows:
            rows[part.operand] = operand.reshape(K, T * B, n)
        constants = [_signed_sum([(s, static[t]) for s, t in terms], None).expand(K, 1, 1, n)
                     .reshape(K, n) if terms else None for terms in part.constants]
        found[item.operand] = Product(rows[part.operand],
                                      [params[name].transpose(1, 2) for name in part.matrices],
                                      constants)
    return found


def run(
    plan_: Plan,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    step=None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run the cell over a sequence, one `step` (default `step_eagerly`) per timestep.

    x: (K, T, B, n); state: one (K, B, n) tensor per state (graph.states order, h first).
    Returns the exposed output h for every step, (K, T, B, n), and the final state.
    """
    step = step or step_eagerly
    T = x.shape[1]
    inputs, group_weights = window_inputs(plan_, params, x)
    # Per step, (K, B, w): a timed input's slice, or a constant's only one.
    step_inputs = {name: value.unbind(1) if value.shape[1] == T else [value.squeeze(1)] * T
                   for name, value in inputs.items()}

    # The recurrent matmuls see detached weights; their weight gradient is formed once per
    # sequence by the sinks (see `_WeightSink`) instead of once per step.
    records = {operand: [] for operand in group_weights}
    deferred = step is step_eagerly  # (a compiled step differentiates as traced instead)
    if deferred and torch.is_grad_enabled() and any(w.requires_grad for w in group_weights.values()):
        for operand, weights in group_weights.items():
            state = _WeightSink.apply(weights, records[operand], *state)
        group_weights = {o: _Recorded(w.detach(), records[o]) for o, w in group_weights.items()}
    outputs = []
    for t in range(T):
        state = step(plan_, group_weights, {name: v[t] for name, v in step_inputs.items()}, state)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def step_eagerly(
    plan_: Plan,
    weights: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor],
    state: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, ...]:
    """One timestep: `weights` per recurrent operand (K, n, m*n); `inputs` holds this step's
    static values by name, `pre:<operand>` the static addends of a fused matmul group and
    `sum:<name>` the static part of a sum; `state` (K, B, n) each. Returns the new state."""
    graph = plan_.graph
    K, B, n = state[0].shape
    values: dict[str, torch.Tensor] = dict(zip(graph.states, state))
    values.update(inputs)
    for item in plan_.loop:
        if isinstance(item, MatmulGroup):
            operand = values[item.operand]
            pre = inputs.get(pre_name(item.operand))
            weight = weights[item.operand]
            if isinstance(weight, _Recorded):
                product = _RecordedMatmul.apply(pre, operand, weight.weight, weight.record)
            elif pre is not None:
                product = torch.baddbmm(pre, operand, weight)
            else:
                product = torch.bmm(operand, weight)
            values.update(zip(item.members, product.split(n, dim=-1)))
        elif isinstance(item, Sum):
            values[item.name] = _signed_sum(
                [(s, values[term]) for s, term in item.recurrent_terms],
                inputs.get(static_sum_name(item.name)),
            )
        else:  # an activation or a product; never a bias, constant or matmul
            values[item.name] = _apply(item, None, values, K)
    # expand: an output computed from biases alone has no batch dimension of its own
    return tuple(values[out].expand(K, B, n) for out in graph.outputs)


# -- one weight gradient per sequence ------------------------------------------------------------
#
# Autograd would add a (K, n, m*n) weight gradient for every timestep: at the paper's shapes (a
# 20-row minibatch) that memory traffic, 35 times per window, costs more than the arithmetic.
# Instead each step's matmul records its operand and output gradient, and one batched matmul over
# all timesteps forms the weight gradient: dW = sum_t v_t^T g_t = V^T G with V (K, T*B, n).
# The sink sits on the initial state, upstream of every step, so autograd runs its backward
# only after every step's backward has recorded.


@dataclass(frozen=True)
class _Recorded:
    weight: torch.Tensor  # detached (K, n, m*n)
    record: list


class _RecordedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, operand, weight, record):
        ctx.save_for_backward(operand, weight)
        ctx.record, ctx.has_pre = record, pre is not None
        return torch.baddbmm(pre, operand, weight) if pre is not None else torch.bmm(operand, weight)

    @staticmethod
    def backward(ctx, grad):
        operand, weight = ctx.saved_tensors
        ctx.record.append((operand, grad))
        return (grad if ctx.has_pre else None), torch.bmm(grad, weight.transpose(1, 2)), None, None


class _WeightSink(torch.autograd.Function):
    """Passes the initial state through; its backward turns the records into dW."""

    @staticmethod
    def forward(ctx, weight, record, *state):
        ctx.record = record
        return tuple(s.view_as(s) for s in state)

    @staticmethod
    def backward(ctx, *grad_state):
        if ctx.record:
            operands = torch.cat([v for v, _ in ctx.record], dim=1)  # (K, T*B, n)
            grads = torch.cat([g for _, g in ctx.record], dim=1)  # (K, T*B, m*n)
            grad_weight = torch.bmm(operands.transpose(1, 2), grads)
            ctx.record.clear()
        else:
            grad_weight = None
        return (grad_weight, None, *grad_state)


@functools.cache
def compiled_step():
    """`step_eagerly` through torch.compile: its elementwise work fused into a few generated
    kernels (one compilation per graph and shape, so worth it for long trainings)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    return torch.compile(step_eagerly, dynamic=False)
