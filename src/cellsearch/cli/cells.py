"""`cellsearch cells list | show`: the zoo and any cell file, as equations, JSON or Graphviz."""

from __future__ import annotations

import argparse

from cellsearch import zoo
from cellsearch.equations import format_graph
from cellsearch.graph import CellGraph


def register(subparsers) -> None:
    parser = subparsers.add_parser("cells", help="list and show cells")
    commands = parser.add_subparsers(dest="cells_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="the zoo's cell names, one per line")
    listing.set_defaults(run=list_cells)
    show = commands.add_parser("show", help="one cell as equations, JSON or Graphviz DOT")
    show.add_argument("cell", metavar="NAME|FILE", help="a zoo name or a .cell/.json file")
    show.add_argument("--format", choices=("text", "json", "dot"), default="text")
    show.set_defaults(run=show_cell)


def list_cells(args: argparse.Namespace) -> int:
    print("\n".join(zoo.names()))
    return 0


def show_cell(args: argparse.Namespace) -> int:
    graph = zoo.resolve(args.cell)
    if args.format == "json":
        print(graph.to_json())
    elif args.format == "dot":
        print(to_dot(graph, title=args.cell))
    else:
        print(format_graph(graph), end="")
    return 0


_LABELS = {"add": "+", "sub": "−", "mul": "⊙", "one": "1", "sigmoid": "sigm", "identity": "id"}


def to_dot(graph: CellGraph, title: str = "cell") -> str:
    """Graphviz DOT: inputs on top, one box per node, state outputs double-circled."""
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for name in graph.inputs:
        lines.append(f'  "{name}" [shape=circle, style=filled, fillcolor="#dde8f7"];')
    for node in graph.nodes:
        if node.op in ("matmul", "bias"):
            label = node.param + (f" (+{node.init:g})" if node.init else "")
        else:
            label = _LABELS.get(node.op, node.op)
        if not node.name.startswith("_"):
            label = f"{node.name} = {label}"
        shape = "doublecircle" if node.name in graph.outputs else "box"
        lines.append(f'  "{node.name}" [label="{label}", shape={shape}];')
        for operand in node.inputs:
            lines.append(f'  "{operand}" -> "{node.name}";')
    lines.append("}")
    return "\n".join(lines)
