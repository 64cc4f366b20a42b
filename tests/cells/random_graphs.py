"""Random valid cell graphs for property tests, built independently of `cellsearch.cells.mutate`."""

import random

from hypothesis import strategies as st

from cellsearch.cells.graph import CellGraph, Node

OPS = ("matmul", "bias", "one", "tanh", "sigmoid", "relu", "identity", "add", "sub", "mul")


def random_graph(seed: int, size: int, two_states: bool, direct_outputs: bool = False) -> CellGraph:
    """With `direct_outputs`, a new state is the node computing it (`h' = W x + ...`) rather than
    an identity of it, so planner paths that treat outputs specially are exercised."""
    rng = random.Random(seed)
    states = ["h", "c"] if two_states else ["h"]
    available = ["x", *states]
    nodes: list[Node] = []
    params = 0

    def add(op, inputs=(), init=0.0):
        nonlocal params
        name = f"_n{len(nodes)}"
        param = None
        if op in ("matmul", "bias"):
            params += 1
            param = f"{'W' if op == 'matmul' else 'b'}_{params}"
        nodes.append(Node(name, op, tuple(inputs), param, init))
        available.append(name)
        return name

    for _ in range(size):
        op = rng.choice(OPS)
        arity = {"matmul": 1, "bias": 0, "one": 0, "add": 2, "sub": 2, "mul": 2}.get(op, 1)
        init = rng.choice([0.0, 0.0, 1.0, 0.9, 1.1]) if op in ("matmul", "bias") else 0.0
        add(op, [rng.choice(available) for _ in range(arity)], init)
    # Every input must be read and every node used: fold them all into the outputs.
    unused = [n for n in available if n not in {i for node in nodes for i in node.inputs}]
    total = add("matmul", ["x"])
    for name in unused + states:
        total = add(rng.choice(["add", "mul", "sub"]), [total, name])
    outputs = {"h": total}
    if two_states:
        outputs["c"] = add("tanh", [total])
    for state, source in outputs.items():
        shared = list(outputs.values()).count(source) > 1
        if direct_outputs and not shared and source.startswith("_n"):
            nodes = [_renamed(node, source, f"{state}'") for node in nodes]
        else:
            nodes.append(Node(f"{state}'", "identity", (source,)))
    # Drop anything not reachable (a node only feeding an earlier fold is still reachable).
    return CellGraph(_reachable(nodes))


def _renamed(node: Node, old: str, new: str) -> Node:
    inputs = tuple(new if i == old else i for i in node.inputs)
    return Node(new if node.name == old else node.name, node.op, inputs, node.param, node.init)


def _reachable(nodes):
    by_name = {n.name: n for n in nodes}
    keep, stack = set(), [n.name for n in nodes if n.name.endswith("'")]
    while stack:
        name = stack.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        stack.extend(by_name[name].inputs)
    return [n for n in nodes if n.name in keep]


graphs = st.builds(
    random_graph,
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 12),
    two_states=st.booleans(),
)
direct_output_graphs = st.builds(
    random_graph,
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 12),
    two_states=st.booleans(),
    direct_outputs=st.just(True),
)
