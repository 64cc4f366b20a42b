"""`cellsearch report | reproduce`: the paper's tables from a database's own evaluations, and
the runs that fill them.

    cellsearch report --db FILE [--format text|markdown|json] [--plots DIR]
    cellsearch reproduce --db FILE --table 1|2|3 [--settings N] [--cells a,b] [--columns A,B]
                         [--set KEY=VALUE] [--device ...] [--executor ...] [--workers N]

The work is in `cellsearch.report`; this module parses arguments, shows progress and prints.
"""

from __future__ import annotations

import argparse
import json
import sys

from cellsearch.cells import zoo
from cellsearch.errors import UserError, gathered
from cellsearch.executors import EXECUTORS, make_executor
from cellsearch.search.config import apply_assignment

# Evaluation options `reproduce --set` passes to the trainer (cheap runs for demos and tests).
EVALUATION_OPTIONS = ("max_epochs", "epoch_windows", "valid_samples", "test_samples",
                      "loss_normalization")


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="the paper's tables, statistics and plots from a database",
        description="The paper's Tables 1-3 computed from a database's evaluations, beside the "
        "paper's numbers; for a search also its §3.4 statistics, funnel and task correlations.",
    )
    report.add_argument("--db", required=True, help="a search or reproduction database")
    report.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="text (default), markdown tables, or JSON")
    report.add_argument("--plots", metavar="DIR", help="also write PNG figures into DIR")
    report.add_argument("--top", type=int, default=3,
                        help="a search's best architectures shown in Table 1 (default 3)")
    report.set_defaults(run=run_report)

    reproduce = subparsers.add_parser(
        "reproduce", help="train the zoo for one of the paper's tables (resumable)",
        description="Train the paper's cells on the settings a table needs, with that table's "
        "schedule (search for Table 1, music for 2, PTB for 3); results go to --db, and running "
        "again resumes. Then: cellsearch report --db FILE.",
    )
    reproduce.add_argument("--db", required=True, help="the reproduction database")
    reproduce.add_argument("--table", type=int, choices=(1, 2, 3), required=True,
                           help="the paper's table: 1 (Arith, XML, PTB accuracy), 2 (music nll),"
                                " 3 (PTB nll)")
    reproduce.add_argument("--settings", type=int, default=20, metavar="N",
                           help="random settings per cell and column (default 20)")
    reproduce.add_argument("--cells", help=f"comma-separated zoo cells (default: the paper's "
                                           f"{len(zoo.PAPER_CELLS)})")
    reproduce.add_argument("--columns", help="comma-separated columns of the table (default all)")
    reproduce.add_argument("--seed", type=int, default=0, help="which settings are drawn")
    reproduce.add_argument("--set", dest="assignments", action="append", default=[],
                           metavar="KEY=VALUE",
                           help=f"an evaluation option ({', '.join(EVALUATION_OPTIONS)}) or "
                                "space.NAME=[values], e.g. space.num_parameters=[5000]")
    reproduce.add_argument("--job-size", type=int, default=20,
                           help="settings trained together as one population (default 20)")
    reproduce.add_argument("--device", default="auto", help="auto, cpu or cuda")
    reproduce.add_argument("--executor", choices=EXECUTORS, default="inprocess",
                           help="where the jobs run (default inprocess: one at a time; mixed:"
                                " different cells in shared launches on a GPU)")
    reproduce.add_argument("--workers", type=int,
                           help="worker processes for processes or dask-local; jobs training at"
                                " once for interleaved and mixed")
    reproduce.add_argument("--scheduler", metavar="ADDRESS",
                           help="Dask scheduler for --executor dask (see docs/cluster.md)")
    reproduce.add_argument("--data-dir",
                           help="where ptb/ and music/ live (default $CELLSEARCH_DATA)")
    reproduce.add_argument("--evaluator", default=None, help="module:function (tests)")
    reproduce.add_argument("--quiet", action="store_true",
                           help="no progress display, only the summary")
    reproduce.set_defaults(run=run_reproduce)


def run_report(args: argparse.Namespace) -> int:
    from cellsearch.report.render import render
    from cellsearch.report.tables import build_report, report_dict
    from cellsearch.storage import open_storage

    if args.top < 0:
        raise UserError(f"--top must be at least 0, got {args.top}")
    with open_storage(args.db, create=False) as storage:
        run = storage.latest_run()
        if run is None:
            raise UserError(f"{args.db} holds no run yet: nothing to report")
        report = build_report(storage, run.run_id, top=args.top)
        written = []
        if args.plots:
            from cellsearch.report.plots import write_plots

            written = write_plots(report, storage, args.plots)
    if args.format == "json":
        print(json.dumps(report_dict(report), indent=2))
    else:
        print(render(report, markdown=args.format == "markdown"), end="")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from cellsearch.cli.evaluate import failures_said
    from cellsearch.executors import DEFAULT_EVALUATOR
    from cellsearch.report.paper import TABLES
    from cellsearch.report.reproduce import (
        Reproduction,
        column_space,
        open_reproduction,
        run_reproduction,
    )
    from cellsearch.storage import open_storage

    if args.settings < 1 or args.job_size < 1:
        raise UserError("--settings and --job-size must be at least 1")
    cells = _names(args.cells, zoo.names(), "cell") if args.cells else zoo.PAPER_CELLS
    table = TABLES[args.table]
    columns = (_names(args.columns, [c.name for c in table.columns], "column")
               if args.columns else None)
    options: dict = {}
    for assignment in args.assignments:
        apply_assignment(options, assignment, known=(*EVALUATION_OPTIONS, "space"))
    space = options.pop("space", {})
    if not isinstance(space, dict):
        raise UserError("reproduce --set space.NAME=[values] names one hyperparameter")
    reproduction = Reproduction(seed=args.seed, evaluation_options=options,
                                space_overrides={k: tuple(v) if isinstance(v, list) else (v,)
                                                 for k, v in space.items()},
                                evaluator=args.evaluator or DEFAULT_EVALUATOR)
    problems: list[str] = []
    for column in table.columns:  # a bad override fails here, before anything is written
        if columns is None or column.name in columns:
            gathered(problems, column_space, table, column, reproduction.space_overrides)
    if reproduction.evaluator == DEFAULT_EVALUATOR:
        from cellsearch.train.evaluate import check_training

        tasks = [c.task for c in table.columns if columns is None or c.name in columns]
        check_training(problems, args.device, tasks, args.data_dir)
    if problems:
        raise UserError("\n".join(problems))
    executor = make_executor(args.executor, workers=args.workers, device=args.device,
                             data_dir=args.data_dir, scheduler=args.scheduler)
    with executor, open_storage(args.db, sole_writer=True) as storage:
        open_reproduction(storage, reproduction)  # refuses a search's database, before training
        executor.start()
        console = Console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=args.quiet) as progress:
            bar = progress.add_task(f"Table {table.number}", total=None)

            def on_job(job, results, done, total):
                progress.update(bar, completed=done, total=total,
                                description=f"Table {table.number}: {job.task}")

            trained, before, failed = run_reproduction(
                storage, executor, args.table, reproduction, count=args.settings, cells=cells,
                columns=columns, job_size=args.job_size, on_job=on_job,
            )
    print(f"Table {args.table}: {trained} settings trained now, {before} stored before"
          f" (cellsearch report --db {args.db})")
    return failures_said(failed, trained, "settings", "; failed runs are not stored, and running"
                         " the same command again trains them again")


def _names(text: str, known, kind: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise UserError(f"unknown {kind}(s) {', '.join(unknown) or repr(text)};"
                        f" known: {', '.join(known)}")
    return names
