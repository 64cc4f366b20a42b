"""`cellsearch evaluate`: train one cell on one task for some hyperparameter settings."""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cellsearch.cells import zoo
from cellsearch.errors import UserError
from cellsearch.evaluation import tasks
from cellsearch.evaluation.result import FAILED, Result, json_number
from cellsearch.evaluation.settings import (
    LOSS_NORMALIZATIONS,
    SearchSpace,
    parse_assignments,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="train a cell on a task and report metrics")
    parser.add_argument("--cell", required=True, metavar="NAME|FILE",
                        help="a zoo cell (cellsearch cells list) or a .cell file")
    parser.add_argument("--task", required=True,
                        help=f"one of {', '.join(tasks.NAMES)}")
    parser.add_argument("--trials", type=int, default=1, metavar="N",
                        help="random settings to train, without repeats (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                        dest="assignments", help="restrict a hyperparameter (repeatable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the settings (each with its own initialization seed) and "
                             "a synthetic task's data (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--schedule", choices=("search", "music", "ptb"),
                        help="learning-rate schedule (default: music for music tasks, ptb for "
                             "ptb, else the search schedule)")
    parser.add_argument("--max-epochs", type=int, help="cap every schedule at this many epochs")
    parser.add_argument("--epoch-windows", type=int,
                        help="training windows per epoch of a synthetic task")
    parser.add_argument("--loss-normalization", choices=LOSS_NORMALIZATIONS, default="minibatch",
                        help="divide a window's summed loss by the minibatch size (§3.7, the "
                             "default) or by its scored targets (docs/fidelity.md)")
    parser.add_argument("--data-dir", help="where ptb/ and music/ live (default $CELLSEARCH_DATA)")
    parser.add_argument("--json", action="store_true", help="one JSON object per trial")
    parser.add_argument("--plot", metavar="DIR",
                        help="also write the trials' learning curves to DIR/CELL-TASK.png")
    parser.set_defaults(run=run_evaluate)


def default_schedule(task: str) -> str:
    entry = tasks.BY_NAME.get(task)
    return entry.schedule if entry is not None else "search"


def run_evaluate(args: argparse.Namespace) -> int:
    from cellsearch.tasks import task_names
    from cellsearch.train.evaluate import evaluate

    if args.task not in task_names():
        raise UserError(f"unknown task {args.task!r}; the tasks are {', '.join(task_names())}")
    for flag, value in (("--trials", args.trials), ("--max-epochs", args.max_epochs),
                        ("--epoch-windows", args.epoch_windows)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    graph = zoo.resolve(args.cell)
    schedule = args.schedule or default_schedule(args.task)
    space = SearchSpace.for_task(args.task, parse_assignments(args.assignments, args.task))
    if schedule != "ptb":  # max_epoch and decay only drive the PTB schedule
        space = SearchSpace.for_task(args.task, {**space.choices, "max_epoch": (None,),
                                                 "decay": (None,)})
    settings = space.sample_distinct(random.Random(args.seed), args.trials)

    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task(f"training {len(settings)} setting(s) of {args.cell} on {args.task}")

        def on_progress(p):
            progress.update(bar, description=f"{args.cell} on {args.task}: epoch {p.epoch}, "
                                             f"window {p.window}, {p.active} training")

        results = evaluate(graph, args.task, settings, device=args.device, data_dir=args.data_dir,
                           schedule=schedule, max_epochs=args.max_epochs,
                           epoch_windows=args.epoch_windows, data_seed=args.seed,
                           loss_normalization=args.loss_normalization, on_progress=on_progress)
    if args.plot:
        from pathlib import Path

        from cellsearch.report.plots import learning_curves

        name = Path(args.cell).stem if args.cell not in zoo.names() else args.cell
        path = learning_curves(results, Path(args.plot) / f"{name}-{args.task}.png",
                               f"{args.cell} on {args.task}")
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        for result in results:
            print(json.dumps(result_record(args.cell, result)))
    else:
        console = Console()
        if console.is_terminal:
            console.print(results_table(args.cell, results))
        else:  # a log or a pipe: rich would cut every column to fit 80 characters
            print(results_text(args.cell, results), end="")
    return failures_said([r for r in results if r.status == FAILED], len(results), "trials")


def failures_said(failed: list[Result], total: int, what: str, note: str = "") -> int:
    """1, with how many of `total` `what` failed and each reason on stderr, when some did (out
    of memory, a broken device: not a finding about the cell, unlike a diverged run); else 0."""
    if not failed:
        return 0
    print(f"cellsearch: {len(failed)} of the {total} {what} failed{note}:", file=sys.stderr)
    reasons = Counter(result.reason or "no reason given" for result in failed)
    for reason, count in reasons.most_common():
        print(f"  {count} x {reason}", file=sys.stderr)
    return 1


def result_record(cell: str, result: Result) -> dict:
    """The JSON line of one trial: strict JSON, a metric that is NaN or infinite (a diverged or
    failed run; `status` and `reason` say which) written as null."""
    return {
        "cell": cell,
        "task": result.task,
        "hyperparameters": result.settings.to_dict(),
        "hidden_size": result.hidden_size,
        "parameter_count": result.num_parameters,
        "metric": result.metric,
        "value": json_number(result.value),
        "valid": {name: json_number(value) for name, value in result.valid.items()},
        "test": {name: json_number(value) for name, value in result.test.items()},
        "history": [{name: json_number(value) for name, value in entry.items()}
                    for entry in result.history],
        "epochs": result.epochs,
        "wall_seconds": round(result.wall_seconds, 3),
        "status": result.status,
        "reason": result.reason,
        "device": result.device,
    }


def results_rows(results: list[Result]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the results table: the hyperparameters, then the metrics."""
    metric = results[0].metric if results else "metric"
    # The second test column: perplexity for softmax tasks, frame accuracy for music.
    extra = "perplexity" if metric == "accuracy" else "frame_accuracy"
    header = ["lr", "init", "clip", "layers", "budget", "hidden", "dropout",
              f"valid {metric}", f"test {metric}", f"test {extra}", "epochs", "status"]
    rows = []
    for r in results:
        s = r.settings
        rows.append([
            f"{s.learning_rate:g}", f"{s.init_scale:g}", f"{s.max_grad_norm:g}",
            str(s.num_layers), str(s.num_parameters), str(r.hidden_size), f"{s.dropout:g}",
            f"{r.value:.4f}", f"{r.test.get(metric, float('nan')):.4f}",
            f"{r.test.get(extra, float('nan')):.3f}",
            str(r.epochs), r.status if r.ok else f"{r.status}: {r.reason}",
        ])
    return header, rows


def results_table(cell: str, results: list[Result]) -> Table:
    """The results for a terminal (rich)."""
    table = Table(title=f"{cell} on {results[0].task}" if results else cell)
    header, rows = results_rows(results)
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def results_text(cell: str, results: list[Result]) -> str:
    """The results for a pipe or a log file: aligned columns, nothing cut, however wide."""
    from cellsearch.report.render import text_table

    header, rows = results_rows(results)
    title = f"{cell} on {results[0].task}" if results else cell
    return f"{title}\n{text_table(header, rows)}"
