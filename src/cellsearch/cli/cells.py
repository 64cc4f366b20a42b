"""`cellsearch cells list | show | draw | kernels`: the zoo and any cell file, as equations, JSON,
Graphviz DOT, a picture (SVG, PNG or PDF: Graphviz's `dot` when installed, matplotlib otherwise),
or the Triton kernels generated for it."""

from __future__ import annotations

import argparse

from cellsearch.cells import ops, zoo
from cellsearch.cells.equations import format_graph
from cellsearch.cells.graph import CellGraph
from cellsearch.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("cells", help="list and show cells")
    commands = parser.add_subparsers(dest="cells_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="the zoo's cell names, one per line")
    listing.set_defaults(run=list_cells)
    show = commands.add_parser("show", help="one cell as equations, JSON or Graphviz DOT")
    show.add_argument("cell", metavar="NAME|FILE", help="a zoo name or a .cell/.json file")
    show.add_argument("--format", choices=("text", "json", "dot"), default="text",
                      help="text: the paper's equations (default); json: the graph; dot: "
                           "Graphviz, nodes named as in the cell's equations")
    show.set_defaults(run=show_cell)
    draw = commands.add_parser("draw", help="one cell as a picture (.svg, .png or .pdf)")
    draw.add_argument("cell", metavar="NAME|FILE", help="a zoo name or a .cell/.json file")
    draw.add_argument("-o", "--output", required=True, metavar="FILE",
                      help="the picture to write; its suffix picks the format")
    draw.add_argument("--engine", choices=("auto", "graphviz", "matplotlib"), default="auto",
                      help="auto: Graphviz's dot when it is on PATH, else matplotlib")
    draw.set_defaults(run=draw_cell)
    kernels = commands.add_parser(
        "kernels", help="the Triton kernels generated for one cell's layer (CUDA's fused engine)")
    kernels.add_argument("cell", metavar="NAME|FILE", help="a zoo name or a .cell/.json file")
    kernels.add_argument("--mode", choices=("persistent", "dot", "cublas"), default="dot",
                         help="persistent: one kernel per member for a whole window (small "
                              "cells); dot, cublas: kernels per timestep, forming the recurrent "
                              "products themselves or reading cuBLAS's (default dot)")
    kernels.set_defaults(run=show_kernels)


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


def show_kernels(args: argparse.Namespace) -> int:
    from cellsearch.engine.kernels.fused import generated_sources  # (imports torch)

    graph = zoo.resolve(args.cell)
    for title, source in generated_sources(graph, args.mode):
        print(f"# ==== {args.cell}, {title} ====")
        print(source)
    return 0


def draw_cell(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    graph = zoo.resolve(args.cell)
    output = Path(args.output)
    if output.suffix not in (".svg", ".png", ".pdf"):
        raise UserError(f"-o {output}: the picture's name must end in .svg, .png or .pdf")
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: directory {output.parent} does not exist")
    dot = shutil.which("dot")
    if args.engine == "graphviz" and dot is None:
        raise UserError("--engine graphviz: Graphviz's `dot` is not on PATH")
    if dot is not None and args.engine != "matplotlib":
        subprocess.run([dot, f"-T{output.suffix[1:]}", "-o", str(output)],
                       input=to_dot(graph, title=args.cell), text=True, check=True)
    else:
        draw(graph, output, title=args.cell)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def node_label(graph: CellGraph, name: str) -> str:
    """What a node shows: the user's name for a named node, then its operation or parameter."""
    if name in graph.inputs:
        return name
    node = graph.node(name)
    if node.op in ("matmul", "bias"):
        label = node.param + (f" (+{node.init:g})" if node.init else "")
    else:
        label = ops.label(node.op)
    return label if node.name.startswith("_") else f"{node.name} = {label}"


def draw(graph: CellGraph, path, title: str) -> None:
    """A picture of `graph` drawn with matplotlib: the inputs on top, each node one row below
    its deepest operand, arrows from operands to users, state outputs in bold."""
    from cellsearch.report.plots import pyplot

    plt = pyplot()

    row = {name: 0 for name in graph.inputs}
    for node in graph.nodes:  # operands first
        row[node.name] = 1 + max(row[i] for i in node.inputs) if node.inputs else 1
    rows: dict[int, list[str]] = {}
    for name, depth in row.items():
        rows.setdefault(depth, []).append(name)
    width = max(len(names) for names in rows.values())
    position: dict[str, tuple[float, float]] = {}
    for depth in sorted(rows):  # each row ordered by where its operands stand (fewer crossings)
        names = rows[depth]
        if depth > 0:
            names.sort(key=lambda name: sum(position[i][0] for i in graph.node(name).inputs)
                       / max(1, len(graph.node(name).inputs)))
        for index, name in enumerate(names):
            position[name] = ((index + 0.5) * width / len(names), -depth)
    figure, axes = plt.subplots(figsize=(max(4, 2.2 * width), max(3, 0.9 * len(rows) + 1)))
    for node in graph.nodes:
        for operand in node.inputs:
            axes.annotate("", xy=position[node.name], xytext=position[operand],
                          arrowprops=dict(arrowstyle="->", color="0.4", shrinkA=12, shrinkB=12))
    for name, (x, y) in position.items():
        is_input, is_output = name in graph.inputs, name in graph.outputs
        axes.text(x, y, node_label(graph, name), ha="center", va="center",
                  fontweight="bold" if is_output else "normal",
                  bbox=dict(boxstyle="circle" if is_input else "round",
                            facecolor="#dde8f7" if is_input else "white", edgecolor="0.3"))
    axes.set_xlim(-0.2, width + 0.2)
    axes.set_ylim(-max(rows) - 0.6, 0.6)
    axes.set_title(title)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def to_dot(graph: CellGraph, title: str = "cell") -> str:
    """Graphviz DOT: inputs on top, one box per node, state outputs double-circled."""
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [fontname="Helvetica"];']
    for name in graph.inputs:
        lines.append(f'  "{name}" [shape=circle, style=filled, fillcolor="#dde8f7"];')
    for node in graph.nodes:
        label = node_label(graph, node.name)
        shape = "doublecircle" if node.name in graph.outputs else "box"
        lines.append(f'  "{node.name}" [label="{label}", shape={shape}];')
        for operand in node.inputs:
            lines.append(f'  "{operand}" -> "{node.name}";')
    lines.append("}")
    return "\n".join(lines)
