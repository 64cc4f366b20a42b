"""`cellsearch data`: look at the tasks' data.

    cellsearch data sample TASK [-n N] [--seed S] [--data-dir DIR]   N samples, one per line
    cellsearch data stats TASK [--data-dir DIR]                     split sizes and vocabulary

Samples are the raw character sequences for memorize, arith (`<input>=<answer>.`) and xml,
sentences for ptb, and note lists of pieces for the music tasks. The work is done by
`cellsearch.tasks`; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse

from cellsearch.errors import UserError
from cellsearch.tasks import get_task, task_names


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="show samples and split sizes of the tasks")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    tasks = ", ".join(task_names())

    sample = commands.add_parser("sample", help="print samples of a task, one per line")
    sample.add_argument("task", metavar="TASK", help=f"one of: {tasks}")
    sample.add_argument("-n", type=int, default=10, help="number of samples (default 10)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    sample.add_argument("--marked", action="store_true",
                        help="under each sample, ^ under the characters that are scored (the "
                             "model reads them all); on a terminal they are shown in colour")
    _add_data_dir(sample)
    sample.set_defaults(run=run_sample)

    stats = commands.add_parser("stats", help="print the split sizes and vocabulary of a task")
    stats.add_argument("task", metavar="TASK", help=f"one of: {tasks}")
    _add_data_dir(stats)
    stats.set_defaults(run=run_stats)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="directory with ptb/ and music/ (default: $CELLSEARCH_DATA, else ~/.cache/cellsearch;"
        " missing files are downloaded there)",
    )


def run_sample(args: argparse.Namespace) -> int:
    if args.n < 0:
        raise UserError(f"-n must be at least 0, got {args.n}")
    task = get_task(args.task, args.data_dir, seed=args.seed)
    scored = getattr(task, "scored_samples", None)  # the synthetic tasks score part of a sample
    if scored is None:
        for line in task.samples(args.n, seed=args.seed):
            print(line)
        return 0
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line, start, stop in scored(args.n, seed=args.seed):
        if console.is_terminal and not args.marked:
            text = Text(line[:start])
            text.append(line[start:stop], style="bold green")
            text.append(line[stop:])
            console.print(text)
        else:
            print(line)
        if args.marked:
            print(" " * start + "^" * (stop - start))
    return 0


def run_stats(args: argparse.Namespace) -> int:
    description = get_task(args.task, args.data_dir).describe()
    splits = description.pop("splits")
    for key, value in description.items():
        print(f"{key}: {value}")
    print()
    print(format_table(splits))
    return 0


def format_table(splits: dict[str, dict]) -> str:
    """Rows of splits, columns of their facts in first-seen order, blank where a split lacks one."""
    columns = list(dict.fromkeys(key for facts in splits.values() for key in facts))
    cells = [["split", *columns]]
    for split, facts in splits.items():
        cells.append([split, *(_format(facts.get(column, "")) for column in columns)])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    )


def _format(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)
