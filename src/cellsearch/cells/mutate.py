"""Mutation of cell graphs (§3.2): the six transformations the search uses to propose a new
architecture from one of its best.

    "We mutate a given architecture by choosing a probability p uniformly at random from [0, 1]
    and independently apply a randomly chosen transformation from the below with probability p
    to each node in the graph. [...] We apply 1-3 of these transformations to mutate an
    architecture. We reject architectures whose number of output vectors is incompatible with the
    number of its input vectors. If an architecture is rejected we try again."

How this module reads the paper where it leaves room:

- Number of transformations: each node is selected independently with probability p, as the paper
  says; if more than three are selected, three of them (at random) are kept, and if none is, one
  node is chosen uniformly. So p sets the magnitude and the count stays within 1-3. The selected
  nodes are transformed one after another, in random order; a node that an earlier transformation
  removed is skipped.
- Only nodes with operands are anchors: a bias or the constant 1 admits none of the six.
- "Ancestors" of a node are the nodes and cell inputs (x, h, c, ...) it depends on, itself
  excluded. The two operands of (6) never depend on the current node, so no cycle arises.
- Activations for (1) are tanh, sigmoid, ReLU and identity nodes, and the pattern `W v + b` that
  Linear(a, v) creates (its matrix and bias read by nothing else). Linear(a, v) always introduces a
  new matrix (diagonal offset a) and a new bias (starting at 0), with fresh names `W_m1`, `b_m1`...
- "Replace the current node by v" (4, 5) makes its users read v. A state output (`h'`) keeps its
  name: it becomes `h' = id(v)`. (1), (2), (3) and (6) rewrite the node in place, keeping its name.
- A state output counts as having one output (the next step's state) for (4).
- Rejected and redrawn: graphs the IR refuses (a state or x no longer read, see `CellGraph`),
  graphs with a constant state output (`h' = id(b_i)`: a state that carries nothing, and has no
  batch dimension), and results with the parent's canonical hash (no-ops such as removing
  `h' = id(v)`).

This module is pure: a graph and the caller's `random.Random` in, a graph out. It knows nothing of
torch, training, or the search's bookkeeping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from cellsearch.cells import ops
from cellsearch.cells.equations import FUNCTION_NAMES, SYMBOLS, node_texts
from cellsearch.cells.graph import (
    ACTIVATIONS,
    ELEMENTWISE,
    CellGraph,
    GraphError,
    Node,
    is_anonymous,
)

# §3.2 (1): the permissible activations; a number a stands for Linear(a, v) = W v + b.
ACTIVATION_CHOICES: tuple[str | float, ...] = (
    *(op.name for op in ops.OPERATIONS if op.mutation), 0.0, 1.0, 0.9, 1.1)
MAX_TRANSFORMATIONS = 3
MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class Mutation:
    """A child graph and what was done to its parent: `kinds` names each transformation applied
    (see `TRANSFORMATIONS`), `description` says what each did, for people reading the history."""

    graph: CellGraph
    description: str
    kinds: tuple[str, ...]


def mutate(graph: CellGraph, rng: random.Random) -> Mutation:
    """A random valid child of `graph` (§3.2), different from it. Deterministic given the state
    of `rng`."""
    parent = graph.canonical_hash()
    for _ in range(MAX_ATTEMPTS):
        draft = _Draft(graph)
        steps = []
        for anchor in _anchors(graph, rng):
            if anchor not in draft.nodes:  # an earlier transformation removed it
                continue
            transformation = rng.choice([t for t in TRANSFORMATIONS if t.applies(draft, anchor)])
            steps.append((transformation.kind, transformation.apply(draft, anchor, rng)))
        if draft.has_constant_output():
            continue
        try:
            child = CellGraph(draft.nodes.values())
        except GraphError:  # "we reject [it] ... we try again"
            continue
        if child.canonical_hash() != parent:
            return Mutation(child, "; ".join(d for _, d in steps), tuple(k for k, _ in steps))
    raise GraphError(
        f"no valid mutation of this cell found in {MAX_ATTEMPTS} attempts; does one of its state "
        "outputs depend on neither x nor a state?"
    )


def transform(graph: CellGraph, kind: str, anchor: str, rng: random.Random) -> Mutation:
    """The one transformation `kind` (a `Transformation.kind`) anchored at node `anchor`, with its
    random choices drawn from `rng`: for tests, and for exploring a cell by hand. Raises
    `GraphError` if it does not apply there or the result is not a valid cell."""
    kinds = {t.kind: t for t in TRANSFORMATIONS}
    if kind not in kinds:
        raise GraphError(f"unknown transformation {kind!r}; known: {', '.join(kinds)}")
    draft = _Draft(graph)
    if anchor not in draft.nodes or not kinds[kind].applies(draft, anchor):
        raise GraphError(f"transformation {kind} does not apply to node {anchor!r}")
    description = kinds[kind].apply(draft, anchor, rng)
    if draft.has_constant_output():
        raise GraphError(f"{description}: a state output would depend on neither x nor a state")
    return Mutation(CellGraph(draft.nodes.values()), description, (kind,))


def _anchors(graph: CellGraph, rng: random.Random) -> list[str]:
    """Each node with operands independently with probability p ~ U[0, 1], at most three, at
    least one; in random order."""
    candidates = [node.name for node in graph.nodes if node.inputs]
    p = rng.random()
    chosen = [name for name in candidates if rng.random() < p]
    rng.shuffle(chosen)
    return chosen[:MAX_TRANSFORMATIONS] or [rng.choice(candidates)]


class _Draft:
    """A graph's nodes while transformations edit them; node order is kept for determinism."""

    def __init__(self, graph: CellGraph):
        self.inputs = graph.inputs
        self.outputs = graph.outputs
        self.nodes: dict[str, Node] = {node.name: node for node in graph.nodes}
        self.params = {node.param for node in graph.nodes if node.param is not None}
        self.count = 0
        self.texts = node_texts(graph)

    def label(self, name: str) -> str:
        """Node `name` as a reader of the parent's equations knows it: its own name when it has
        one (`o`, `x`), else its expression (`b_i`, `[W_xi x + W_hi h]`), for a node this
        mutation made too (`tanh(b_r)`), as it stands before the transformation that names it."""
        text = self._text(name)
        return f"[{text}]" if " " in text else text

    def _text(self, name: str) -> str:
        if not is_anonymous(name):
            return name
        if name in self.texts:  # the parent's
            return self.texts[name]
        node = self.nodes[name]  # made by this mutation
        texts = [self._text(i) for i in node.inputs]
        if node.op in FUNCTION_NAMES:
            return f"{FUNCTION_NAMES[node.op]}({texts[0]})"
        operands = [f"({t})" if any(f" {o} " in t for o in SYMBOLS.values()) else t
                    for t in texts]  # a sum or product inside another, or under a matrix
        if node.op == "matmul":
            return f"{node.param} {operands[0]}"
        if node.op in SYMBOLS:
            return f" {SYMBOLS[node.op]} ".join(operands)
        return node.param or node.op  # a bias, the constant

    def operands(self, name: str) -> tuple[str, ...]:
        return self.nodes[name].inputs if name in self.nodes else ()  # cell inputs have none

    def users(self, name: str) -> list[str]:
        """The nodes that read `name`, once per operand (`v * v` counts twice)."""
        return [node.name for node in self.nodes.values() for i in node.inputs if i == name]

    def ancestors(self, name: str) -> list[str]:
        return self._closure(name, self.operands)

    def descendants(self, name: str) -> list[str]:
        return self._closure(name, self.users)

    def _closure(self, name: str, step: Callable[[str], list[str] | tuple[str, ...]]) -> list[str]:
        found: set[str] = set()
        stack = list(step(name))
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(step(current))
        return [n for n in (*self.inputs, *self.nodes) if n in found]  # a deterministic order

    def add(self, op: str, inputs: tuple[str, ...] = (), param: str | None = None,
            init: float = 0.0, name: str | None = None) -> str:
        """Define node `name` (fresh and anonymous by default; an existing one is replaced)."""
        if name is None:
            self.count += 1
            name = f"_m{self.count}"  # canonical anonymous names are `_<digits>`: no clash
        self.nodes[name] = Node(name, op, inputs, param, init)
        return name

    def new_param(self, prefix: str) -> str:
        number = 1
        while f"{prefix}_m{number}" in self.params:
            number += 1
        self.params.add(f"{prefix}_m{number}")
        return f"{prefix}_m{number}"

    def activation(self, choice: str | float, operand: str, name: str | None = None) -> str:
        """`choice(operand)`; a number a builds Linear(a, operand) = W operand + b with a new W
        (a on its diagonal) and a new b."""
        if isinstance(choice, str):
            return self.add(choice, (operand,), name=name)
        matrix = self.add("matmul", (operand,), self.new_param("W"), init=choice)
        bias = self.add("bias", (), self.new_param("b"))
        return self.add("add", (matrix, bias), name=name)

    def redirect(self, old: str, new: str) -> None:
        """Replace node `old` by `new`: its users read `new`; a state output becomes `id(new)`."""
        for node in list(self.nodes.values()):
            if old in node.inputs:
                inputs = tuple(new if i == old else i for i in node.inputs)
                self.nodes[node.name] = replace(node, inputs=inputs)
        if old in self.outputs:
            self.add("identity", (new,), name=old)
        else:
            del self.nodes[old]

    def has_constant_output(self) -> bool:
        """Whether a state output reads neither x nor any state, only biases and ones."""
        return any(
            not any(a in self.inputs for a in self.ancestors(output)) for output in self.outputs
        )

    def prune(self) -> None:
        """Drop the nodes no state output depends on any more."""
        live = {*self.outputs, *(a for o in self.outputs for a in self.ancestors(o))}
        self.nodes = {name: node for name, node in self.nodes.items() if name in live}


def _label(choice: str | float) -> str:
    return choice if isinstance(choice, str) else f"Linear({choice:g}, ·)"


# -- the six transformations of §3.2 --------------------------------------------------------------


def _activation_of(draft: _Draft, name: str) -> tuple[str | float, str] | None:
    """(activation, operand) if node `name` is an activation, else None. The Linear(a, v) pattern
    `W v + b` counts when nothing else reads its W and b; its activation is then a."""
    node = draft.nodes[name]
    if node.op in ACTIVATIONS:
        return node.op, node.inputs[0]
    if node.op != "add":
        return None
    parts = {draft.nodes[i].op: draft.nodes[i] for i in node.inputs if i in draft.nodes}
    if set(parts) != {"matmul", "bias"} or any(len(draft.users(i)) != 1 for i in node.inputs):
        return None
    return parts["matmul"].init, parts["matmul"].inputs[0]


def replace_activation(draft: _Draft, name: str, rng: random.Random) -> str:
    """(1) "If the current node is an activation function, replace it with a randomly chosen
    activation function. The set of permissible nonlinearities is {tanh(x), sigmoid(x), ReLU(x),
    Linear(0, x), Linear(1, x), Linear(0.9, x), Linear(1.1, x)}." """
    current, operand = _activation_of(draft, name)
    choice = rng.choice([a for a in ACTIVATION_CHOICES if a != current])
    description = f"replace activation {draft.label(name)}: {_label(current)} -> {_label(choice)}"
    draft.activation(choice, operand, name=name)
    draft.prune()  # the old W and b of a Linear
    return description


def replace_elementwise(draft: _Draft, name: str, rng: random.Random) -> str:
    """(2) "If the current node is an elementwise operation, replace it with a different
    randomly-chosen elementwise operation (multiplication, addition, subtraction)." """
    node = draft.nodes[name]
    op = rng.choice([op for op in ELEMENTWISE if op != node.op])
    description = f"replace operation {draft.label(name)}: {SYMBOLS[node.op]} -> {SYMBOLS[op]}"
    draft.nodes[name] = replace(node, op=op)
    return description


def insert_activation(draft: _Draft, name: str, rng: random.Random) -> str:
    """(3) "Insert a random activation function between the current node and one of its
    parents." """
    node = draft.nodes[name]
    position = rng.randrange(len(node.inputs))
    choice = rng.choice(ACTIVATION_CHOICES)
    description = (f"insert {_label(choice)} between {draft.label(name)} and its operand "
                   f"{draft.label(node.inputs[position])}")
    inserted = draft.activation(choice, node.inputs[position])
    inputs = (*node.inputs[:position], inserted, *node.inputs[position + 1:])
    draft.nodes[name] = replace(node, inputs=inputs)
    return description


def _removable(draft: _Draft, name: str) -> bool:
    node = draft.nodes[name]
    if name in draft.outputs:  # its one output is the next step's state; `id` would stay `id`
        return len(node.inputs) == 1 and node.op != "identity" and not draft.users(name)
    return len(node.inputs) == 1 and len(draft.users(name)) == 1


def remove_node(draft: _Draft, name: str, rng: random.Random) -> str:
    """(4) "Remove the current node if it has one input and one output." """
    description = f"remove {draft.texts.get(name) or draft.label(name)}"  # `o = sigm(…)`
    draft.redirect(name, draft.nodes[name].inputs[0])
    return description


def replace_with_ancestor(draft: _Draft, name: str, rng: random.Random) -> str:
    """(5) "Replace the current node with a randomly chosen node from the current node's
    ancestors (i.e., all nodes that A depends on). This allows us to reduce the size of the
    graph." """
    ancestor = rng.choice(draft.ancestors(name))
    description = f"replace {draft.label(name)} by its ancestor {draft.label(ancestor)}"
    draft.redirect(name, ancestor)
    draft.prune()
    return description


def replace_with_combination(draft: _Draft, name: str, rng: random.Random) -> str:
    """(6) "Randomly select a node (node A). Replace the current node with either the sum,
    product, or difference of a random ancestor of the current node and a random ancestor of A."
    Ancestors of A that depend on the current node are excluded, which keeps the graph acyclic;
    A is drawn among the nodes left with some ancestor (the current node always is)."""
    excluded = {name, *draft.descendants(name)}
    pools = {a: [n for n in draft.ancestors(a) if n not in excluded] for a in draft.nodes}
    other = rng.choice([a for a, pool in pools.items() if pool])
    left, right = rng.choice(draft.ancestors(name)), rng.choice(pools[other])
    op = rng.choice(ELEMENTWISE)
    description = (f"replace {draft.label(name)} by {draft.label(left)} {SYMBOLS[op]} "
                   f"{draft.label(right)} (A = {draft.label(other)})")
    draft.add(op, (left, right), name=name)
    draft.prune()
    return description


@dataclass(frozen=True)
class Transformation:
    kind: str
    applies: Callable[[_Draft, str], bool]
    apply: Callable[[_Draft, str, random.Random], str]


def _has_operands(draft: _Draft, name: str) -> bool:
    return bool(draft.nodes[name].inputs)


TRANSFORMATIONS = (
    Transformation("replace_activation", lambda d, n: _activation_of(d, n) is not None,
                   replace_activation),
    Transformation("replace_elementwise", lambda d, n: d.nodes[n].op in ELEMENTWISE,
                   replace_elementwise),
    Transformation("insert_activation", _has_operands, insert_activation),
    Transformation("remove_node", _removable, remove_node),
    Transformation("replace_with_ancestor", _has_operands, replace_with_ancestor),
    Transformation("replace_with_combination", _has_operands, replace_with_combination),
)
