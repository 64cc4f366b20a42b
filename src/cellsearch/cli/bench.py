"""`cellsearch bench`: training throughput against cuDNN's LSTM, and the search's recurring costs."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from cellsearch.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure training speed against torch.nn.LSTM")
    parser.add_argument("--task", choices=("arith", "arith-1m", "ptb", "memorize"), default="arith",
                        help="the shapes to measure (arith: 250K parameters, arith-1m: 1M)")
    parser.add_argument("--cell", default="lstm", metavar="NAME|FILE",
                        help="the cell to time (default lstm)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--populations", default="1,8,32,128",
                        help="population sizes K to measure (comma-separated)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--search-costs", action="store_true",
                        help="also time the memorization filter and 20 arith settings")
    parser.add_argument("--compare", default="", metavar="ENGINES",
                        help="also measure these engines at the smallest and largest K, "
                             "comma-separated: eager, fused, compiled (compiles for a while)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--mixed", type=int, metavar="N",
                        help="instead: N different cells at K=4 trained together, against one "
                             "cell at K=4 and at K=4N (one epoch each)")
    parser.add_argument("--windows", type=int, default=200,
                        help="training windows of that epoch (--mixed; default 200)")
    parser.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from cellsearch.train import bench, reference
    from cellsearch.train.evaluate import resolve_device
    from cellsearch.train.model import ENGINES

    device = resolve_device(args.device)
    if args.mixed is not None:
        return run_mixed(args, device)
    try:
        populations = tuple(int(k) for k in args.populations.split(","))
    except ValueError:
        raise UserError(f"--populations expects integers like 1,8,32, got {args.populations!r}")
    if args.repeats < 1 or any(k < 1 for k in populations):
        raise UserError("--repeats and every population size must be at least 1")
    compare = tuple(e for e in args.compare.split(",") if e)
    unknown = [e for e in compare if e not in ENGINES]
    if unknown:
        raise UserError(f"--compare: unknown engine {unknown[0]!r}; known: {', '.join(ENGINES)}")
    rows = bench.throughput(args.task, args.cell, str(device), populations, args.repeats,
                            compare)
    best = max((row for row in rows if row.engine.startswith("cellsearch ")),
               key=lambda row: row.tokens_per_second)
    reference.save(device.type, args.task, {
        "tokens_per_second": best.tokens_per_second, "population": best.population,
        "engine": best.engine, "device": _device_name(device), "torch": torch.__version__})

    def on_cost(task: str, cost: dict) -> None:  # partial results survive an interrupted run
        print(f"{task}: {cost['settings']} settings in {cost['wall_seconds']:.1f} s, "
              f"epochs {cost['epochs']}", file=sys.stderr, flush=True)

    costs = bench.search_costs(str(device), on_cost=on_cost) if args.search_costs else None
    header = {"task": args.task, "device": _device_name(device), "torch": torch.__version__}
    if args.json:
        print(json.dumps({**header, "throughput": bench.as_dicts(rows), "search_costs": costs}))
        return 0
    table = Table(title=f"training throughput, {args.task} shapes, {header['device']}, "
                        f"torch {header['torch']}")
    for column in ("engine", "K", "hidden", "tokens/s", "× cuDNN", "TFLOP/s", "of peak"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row.engine, str(row.population), str(row.hidden_size),
                      f"{row.tokens_per_second:,.0f}", f"{row.ratio_to_cudnn:.2f}",
                      f"{row.tflops:.2f}", f"{row.fraction_of_peak:.2%}")
    console = Console()
    console.print(table)
    if costs:
        console.print(f"memorization filter, one candidate: {costs['memorize']['wall_seconds']:.1f} s")
        arith = costs["arith"]
        console.print(f"{arith['settings']} arith settings under the search schedule: "
                      f"{arith['wall_seconds']:.1f} s ({arith['settings_per_gpu_hour']:,.0f} "
                      "settings per GPU-hour)")
    return 0


def run_mixed(args: argparse.Namespace, device) -> int:
    import torch

    from cellsearch.train import bench

    if args.mixed < 1 or args.windows < 1:
        raise UserError("--mixed and --windows must be at least 1")
    rows = bench.mixed(args.mixed, args.task, str(device), windows=args.windows)
    header = {"task": args.task, "device": _device_name(device), "torch": torch.__version__}
    if args.json:
        print(json.dumps({**header, "mixed": rows}))
        return 0
    base = rows[0]["tokens_per_second"]
    table = Table(title=f"different cells trained together, {args.task} shapes, "
                        f"{header['device']}, torch {header['torch']}")
    for column in ("training", "cells", "K", "seconds", "tokens/s", "× one cell at K"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["what"], str(row["cells"]), str(row["K"]), f"{row['seconds']:.2f}",
                      f"{row['tokens_per_second']:,.0f}", f"{row['tokens_per_second'] / base:.2f}")
    Console().print(table)
    return 0


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
