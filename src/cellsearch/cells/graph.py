"""The cell IR: a recurrent cell as an immutable computation graph (§3.2 of the paper).

A cell reads the external input `x` and M state inputs (`h`, `c`, ...) and defines M state outputs
(`h'`, `c'`, ...). Every node has the same dimensionality n, so a node is fully described by its
operation and its operands. This module knows nothing of torch, text or storage.

Node names: a state output is named with a prime (`c'`); named intermediate nodes keep their names
(`i`, `f`, `h~`); every other node is anonymous and named `_1`, `_2`, ... in a canonical order that
the constructor assigns, so two graphs built from the same equations are equal whatever names or
order their builder used for anonymous nodes.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from cellsearch.cells import ops
from cellsearch.errors import UserError

INPUT = "x"
EXPOSED_STATE = "h"

# The operations (`ops.OPERATIONS`): W v and b carry parameters (`init` is added to a matrix's
# diagonal, Linear(a, .), or to a bias's start, 1 for LSTM-b's forget gate).
ACTIVATIONS = ops.names("activation")
ELEMENTWISE = ops.names("elementwise")
PARAMETRIC = ops.names("parameter")
COMMUTATIVE = tuple(op.name for op in ops.OPERATIONS if op.commutative)
ARITY = {op.name: op.arity for op in ops.OPERATIONS}  # op -> number of operands
# The most operations on any path through a cell. The paper's cells are at most 7 deep; the limit
# keeps every graph printable, hashable and compilable without deep recursion, and a mutation
# that would exceed it is rejected and tried again, like any invalid child (§3.2).
MAX_DEPTH = 200


class GraphError(UserError):
    """A graph that is not a valid cell; the message says exactly what is wrong."""


@dataclass(frozen=True)
class Node:
    """One operation. `inputs` name other nodes, `x`, or state inputs (`h`, `c`, ...).

    `param` names the learned tensor of a `matmul` or `bias` node (`W_xi`, `b_f`); `init` is the
    constant added at initialization to a matrix's diagonal or to a bias's random start.
    """

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    param: str | None = None
    init: float = 0.0

    def to_dict(self) -> dict:
        data: dict = {"name": self.name, "op": self.op, "inputs": list(self.inputs)}
        if self.param is not None:
            data["param"] = self.param
        if self.init:
            data["init"] = self.init
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> Node:
        node = cls(
            name=data["name"],
            op=data["op"],
            inputs=tuple(data.get("inputs", ())),
            param=data.get("param"),
            init=float(data.get("init", 0.0)),
        )
        texts = [node.name, node.op, *node.inputs] + ([node.param] if node.param else [])
        if not all(isinstance(text, str) for text in texts):
            raise TypeError("names, ops, inputs and params are strings")
        return node


def is_anonymous(name: str) -> bool:
    return name.startswith("_")


def output_name(state: str) -> str:
    return state + "'"


@dataclass(frozen=True, eq=False)
class CellGraph:
    """A validated cell. Construct with nodes in any order; `nodes` ends up topologically
    sorted (keeping the given order where it can) with canonically named anonymous nodes.

    `states` lists the state names, the exposed `h` first, then the others by name.
    """

    nodes: tuple[Node, ...]
    states: tuple[str, ...]

    def __init__(self, nodes: Iterable[Node]):
        nodes = tuple(nodes)
        by_name = _index(nodes)
        states = _states(by_name)
        canonical = _canonical_order(by_name, states)
        object.__setattr__(self, "states", states)
        object.__setattr__(self, "nodes", canonical)
        _validate(self)

    # -- structure ------------------------------------------------------------------------------

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names a node may read besides other nodes: `x` and the state inputs."""
        return (INPUT, *self.states)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(output_name(s) for s in self.states)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def parameters(self) -> tuple[Node, ...]:
        """The `matmul` and `bias` nodes, each owning one learned tensor, in node order."""
        return tuple(n for n in self.nodes if n.op in PARAMETRIC)

    @property
    def num_matrices(self) -> int:
        return sum(n.op == "matmul" for n in self.nodes)

    @property
    def num_biases(self) -> int:
        return sum(n.op == "bias" for n in self.nodes)

    def consumers(self) -> dict[str, list[str]]:
        """Name -> names of the nodes that read it (with repeats for `v * v`)."""
        users: dict[str, list[str]] = {name: [] for name in self.inputs}
        users.update({n.name: [] for n in self.nodes})
        for node in self.nodes:
            for operand in node.inputs:
                users[operand].append(node.name)
        return users

    # -- identity -------------------------------------------------------------------------------

    # Anonymous names are canonical, so the set of nodes identifies the graph whatever its order.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellGraph) and frozenset(self.nodes) == frozenset(other.nodes)

    def __hash__(self) -> int:
        return hash(frozenset(self.nodes))

    def canonical_hash(self) -> str:
        """A hex digest equal for graphs that differ only in node order, the names of
        intermediate nodes and parameters, or the operand order of `+` and `*`.

        Each node gets a Merkle hash of its op, init and operands' hashes (sorted for commutative
        ops); the graph hash covers the outputs' hashes and the multiset of all node hashes, so a
        shared subexpression (one matrix used twice) differs from two copies of it (two matrices).
        """
        memo: dict[str, str] = {name: f"input:{name}" for name in self.inputs}
        for node in self.nodes:  # topological order
            operands = [memo[i] for i in node.inputs]
            if node.op in COMMUTATIVE:
                operands.sort()
            memo[node.name] = _digest([node.op, node.init, operands])
        outputs = [memo[o] for o in self.outputs]
        everything = sorted(memo[n.name] for n in self.nodes)
        return _digest([list(self.states), outputs, everything])

    # -- serialization --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"states": list(self.states), "nodes": [n.to_dict() for n in self.nodes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping) -> CellGraph:
        try:
            nodes = [Node.from_dict(n) for n in data["nodes"]]
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise GraphError(f"not a cell graph: bad node entry ({error})") from None
        graph = cls(nodes)
        if "states" in data and list(data["states"]) != list(graph.states):
            raise GraphError(f"not a cell graph: states {data['states']} do not match its outputs")
        return graph

    @classmethod
    def from_json(cls, text: str) -> CellGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise GraphError(f"not a cell graph: invalid JSON ({error})") from None
        if not isinstance(data, dict):
            raise GraphError("not a cell graph: expected a JSON object")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        """One line a node, `name = op(operands)` (`equations.format_graph` prints the
        equations; the IR does not depend on the text language)."""

        def body(node: Node) -> str:
            if node.op == "bias":
                return node.param
            if node.op == "matmul":
                return f"{node.param} {node.inputs[0]}"
            operands = f"({', '.join(node.inputs)})" if node.inputs else ""
            return ops.label(node.op) + operands

        return "CellGraph(<<\n" + "".join(f"{n.name} = {body(n)}\n" for n in self.nodes) + ">>)"


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def _index(nodes: tuple[Node, ...]) -> dict[str, Node]:
    by_name: dict[str, Node] = {}
    params: dict[str, str] = {}
    names = {node.name for node in nodes}
    for node in nodes:
        if node.name in by_name:
            raise GraphError(f"node {node.name!r} is defined twice")
        if node.name == INPUT or output_name(node.name) in names:
            raise GraphError(f"node {node.name!r} has the name of an input of the cell")
        if node.op not in ARITY:
            raise GraphError(f"node {node.name!r} has unknown operation {node.op!r}")
        if len(node.inputs) != ARITY[node.op]:
            raise GraphError(
                f"node {node.name!r}: {node.op} takes {ARITY[node.op]} operand(s), "
                f"got {len(node.inputs)}"
            )
        if (node.op in PARAMETRIC) != (node.param is not None):
            kind = "needs a parameter name" if node.op in PARAMETRIC else "takes no parameter"
            raise GraphError(f"node {node.name!r}: {node.op} {kind}")
        if node.init and node.op not in PARAMETRIC:
            raise GraphError(f"node {node.name!r}: only matrices and biases have an initial value")
        if node.param is not None:
            if node.param in params:
                raise GraphError(
                    f"parameter {node.param!r} is used twice ({params[node.param]!r} and "
                    f"{node.name!r}); every matrix and bias is its own parameter"
                )
            params[node.param] = node.name
        by_name[node.name] = node
    return by_name


def _states(by_name: Mapping[str, Node]) -> tuple[str, ...]:
    states = sorted(name[:-1] for name in by_name if name.endswith("'"))
    for state in states:
        if not state.isidentifier() or state.startswith("_") or state == INPUT:
            raise GraphError(
                f"bad state output name {state + chr(39)!r}: a state is a letter-led name "
                f"other than {INPUT!r}"
            )
    if EXPOSED_STATE not in states:
        raise GraphError(f"the cell defines no {output_name(EXPOSED_STATE)}: every cell exposes h")
    states.remove(EXPOSED_STATE)
    return (EXPOSED_STATE, *states)


def _canonical_order(by_name: Mapping[str, Node], states: tuple[str, ...]) -> tuple[Node, ...]:
    """Rename anonymous nodes `_1, _2, ...` in depth-first post-order from the outputs (state
    order, operands in order), which depends only on the structure and the named nodes; then sort
    topologically. Reports cycles, undefined names and unused nodes."""
    inputs = {INPUT, *states}
    order: list[str] = []
    status: dict[str, str] = {}  # name -> "open" | "done"
    for root in [output_name(s) for s in states]:
        if root in status:  # already reached from an earlier output (h' reads c')
            continue
        stack = [(root, iter(by_name[root].inputs))]
        status[root] = "open"
        while stack:
            name, operands = stack[-1]
            for operand in operands:
                if operand in inputs:
                    continue
                if operand not in by_name:
                    raise GraphError(
                        f"node {name!r} reads {operand!r}, which is not defined (a state input "
                        f"{operand!r} needs its output {output_name(operand)} defined)"
                    )
                if status.get(operand) == "open":
                    raise GraphError(f"cycle: {operand!r} depends on itself (through {name!r})")
                if operand not in status:
                    status[operand] = "open"
                    stack.append((operand, iter(by_name[operand].inputs)))
                    break
            else:
                stack.pop()
                status[name] = "done"
                order.append(name)
    unused = [name for name in by_name if name not in status]
    if unused:
        raise GraphError(
            f"node(s) {', '.join(map(repr, unused))} are never used by any state output"
        )
    renamed: dict[str, str] = {}
    for name in order:
        if is_anonymous(name):
            renamed[name] = f"_{len(renamed) + 1}"
    rename = lambda n: renamed.get(n, n)  # noqa: E731
    return tuple(
        Node(rename(n), by_name[n].op, tuple(map(rename, by_name[n].inputs)),
             by_name[n].param, by_name[n].init)
        for n in _stable_topological_order(by_name)
    )


def _stable_topological_order(by_name: Mapping[str, Node]) -> list[str]:
    """Operands before users, otherwise keeping the builder's order (so equations print in the
    order they were written)."""
    position = {name: i for i, name in enumerate(by_name)}
    waiting = {name: {i for i in node.inputs if i in by_name} for name, node in by_name.items()}
    users: dict[str, list[str]] = {name: [] for name in by_name}
    for name, operands in waiting.items():
        for operand in operands:
            users[operand].append(name)
    ready = [position[name] for name, operands in waiting.items() if not operands]
    heapq.heapify(ready)
    names = list(by_name)
    order = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for user in users[name]:
            waiting[user].discard(name)
            if not waiting[user]:
                heapq.heappush(ready, position[user])
    return order


def _validate(graph: CellGraph) -> None:
    depth: dict[str, int] = {}
    for node in graph.nodes:  # operands first (canonical order)
        depth[node.name] = 1 + max((depth.get(i, 0) for i in node.inputs), default=0)
        if depth[node.name] > MAX_DEPTH:
            raise GraphError(
                f"the cell is more than {MAX_DEPTH} operations deep (at {node.name!r}); the"
                f" deepest cell cellsearch takes has {MAX_DEPTH}"
            )
    read = {operand for node in graph.nodes for operand in node.inputs}
    if INPUT not in read:
        raise GraphError("the cell never reads its input x")
    for state in graph.states:
        if state not in read:
            raise GraphError(
                f"state {state!r} is never read: {output_name(state)} is computed but nothing "
                f"uses {state!r} at the next step"
            )
