"""`cellsearch search | top | stats`: run or resume an architecture search, and report on it.

    cellsearch search --db FILE [--preset tiny] [--config FILE] [--set key=value ...]
                      [--device auto|cpu|cuda] [--executor inprocess|interleaved|mixed|processes|dask|dask-local]
                      [--workers N] [--jobs-per-worker N] [--scheduler ADDRESS]
                      [--data-dir DIR] [--quiet]
    cellsearch top --db FILE [-n N] [--json]
    cellsearch stats --db FILE [--json]

`search` starts a run in a new database, or resumes the run a database holds (its stored
configuration applies; only the budget keys `max_steps`, `max_evaluations` and `job_size` may be
changed, e.g. `--set max_steps=200` to extend a finished run, while any key may change until the
run has stored an evaluation). A start that fails (a bad setting, an unreachable Dask scheduler)
writes nothing. The work is done by `cellsearch.search`; this module parses arguments, shows
progress and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator

from cellsearch.errors import UserError, gathered
from cellsearch.executors import DEFAULT_EVALUATOR, EXECUTORS, make_executor
from cellsearch.executors.interleaved import on_gpu
from cellsearch.search import (
    Event,
    JobCompleted,
    RankedArchitecture,
    SearchStarted,
    SearchStatistics,
    StageStarted,
    StepCompleted,
    check_evaluator,
    check_mutator,
    plan_run,
    run_search,
    select_run,
    start_run,
    statistics,
    top_architectures,
)
from cellsearch.search.config import SearchConfig, load_config, settings_listing
from cellsearch.search.presets import preset_names
from cellsearch.search.procedure import MutateFunction
from cellsearch.storage import has_data, open_storage


def register(subparsers) -> None:
    search = subparsers.add_parser(
        "search",
        help="run or resume an architecture search (§3.1)",
        description="Start a search in a new database, or resume the run a database holds. A "
        "resumed run keeps its stored settings; only max_steps, max_evaluations and job_size may "
        "change (e.g. --set max_steps=200 extends a finished run). Try: --preset tiny.",
    )
    search.add_argument("--db", help="the search database (created if missing)")
    search.add_argument(
        "--list-settings", action="store_true",
        help="list every search setting (--set KEY=VALUE, or a --config file) and exit",
    )
    search.add_argument(
        "--preset", choices=preset_names(),
        help="a built-in configuration: tiny (a CPU demo), paper (the paper's procedure, spelled"
        " out), paper-small (the same at lower cost, for one GPU)"
    )
    search.add_argument("--config", help="a .json or .toml file of search settings")
    search.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one search setting, e.g. max_steps=100 or evaluation_options.max_epochs=2",
    )
    search.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    search.add_argument(
        "--executor", choices=EXECUTORS, default=None,
        help="where evaluations run (default inprocess: one step's evaluations at a time)",
    )
    search.add_argument(
        "--workers", type=int, default=None,
        help="worker processes for --executor processes (default 2) or dask-local "
             "(default one per GPU); jobs training at once for interleaved and mixed (default 64)",
    )
    search.add_argument(
        "--jobs-per-worker", type=int, default=None, metavar="N",
        help="with --executor dask or dask-local: each worker trains up to N jobs at once,"
             " together (on a GPU in the mixed engine's shared launches; default 1)",
    )
    search.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="Dask scheduler for --executor dask, e.g. tcp://HOST:8786 (see docs/cluster.md)",
    )
    search.add_argument(
        "--data-dir", help="directory with ptb/ and music/ (default: $CELLSEARCH_DATA)"
    )
    search.add_argument(
        "--quiet", action="store_true", help="no progress display, only the summary"
    )
    search.set_defaults(run=run_search_command)

    top = subparsers.add_parser("top", help="the best architectures of a search")
    top.add_argument("--db", required=True, help="the search database")
    top.add_argument("-n", type=int, default=10, help="how many (default 10)")
    top.add_argument("--json", action="store_true", help="print JSON instead of text")
    top.set_defaults(run=run_top_command)

    stats = subparsers.add_parser("stats", help="the statistics of a search (§3.4)")
    stats.add_argument("--db", required=True, help="the search database")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(run=run_stats_command)


# -- search -------------------------------------------------------------------------------------


def run_search_command(args: argparse.Namespace) -> int:
    if args.list_settings:
        print(settings_listing(), end="")
        return 0
    if not args.db:
        raise UserError("search needs --db FILE (or --list-settings)")
    if args.executor is None:
        args.executor = "inprocess"
        if _device_kind(args.device) == "cuda" and not args.quiet:
            print("cellsearch: note: the default executor trains one step's evaluations at a"
                  " time, which leaves a GPU mostly idle; --executor mixed trains many steps'"
                  " together in shared launches (see the README's Commands)",
                  file=sys.stderr)
    executor = make_executor(
        args.executor, workers=args.workers, device=args.device, data_dir=args.data_dir,
        scheduler=args.scheduler, jobs_per_worker=args.jobs_per_worker,
    )
    if args.executor == "mixed" and _device_kind(args.device) == "cpu" and not args.quiet:
        print("cellsearch: note: the mixed engine is made for GPUs; on a CPU its steps run as"
              " torch operations, several times slower than --executor interleaved (same"
              " results)", file=sys.stderr)
    # Nothing is written before every check has passed and the executor has started (a Dask
    # scheduler reached): a failed start leaves no file behind, or the database as it was.
    with executor, _summary_printed(executor):
        checked, mutate = None, None
        if not has_data(args.db):
            checked = load_config(
                preset=args.preset, path=args.config, assignments=args.assignments
            )
            executor.start()  # worker processes start up while the driver checks
            mutate = _check_start(checked, args)
        with open_storage(args.db, sole_writer=True) as storage:
            plan = plan_run(
                storage, preset=args.preset, config_path=args.config, assignments=args.assignments
            )
            executor.start()
            if plan.config != checked:
                mutate = _check_start(plan.config, args)
            run_id = start_run(storage, plan)
            with _Display(args.quiet, _bench_reference(args)) as display:
                summary = run_search(
                    storage,
                    run_id,
                    plan.config,
                    executor,
                    mutate=mutate,
                    on_event=display.show,
                    evaluator_checked=True,
                )
    best = summary.top_list[0] if summary.top_list else None
    print(
        f"run {summary.run_id}: {summary.steps_run} step{'' if summary.steps_run == 1 else 's'}"
        " run now, last completed step"
        f" {summary.last_step}, {summary.total_evaluations} evaluations stored"
    )
    if best is not None:
        print(
            f"best: {best.architecture_hash[:12]} fitness {_number(best.fitness)}"
            f"  (cellsearch top --db {args.db})"
        )
    return 0


@contextlib.contextmanager
def _summary_printed(executor) -> Iterator[None]:
    """On the way out, also when interrupted, the executor's line on how the work went (the
    mixed executor's: how the GPU was used so far)."""
    try:
        yield
    finally:
        if (summary := executor.summary()) is not None:
            print(summary)


def _bench_reference(args: argparse.Namespace) -> dict | None:
    """This machine's one-cell figure for arith's shapes, when the search trains here; with
    `dask-local` on GPUs, times the GPUs its workers train on (`gpus`)."""
    if args.quiet or args.executor == "dask":  # (its workers' machines are not this one)
        return None
    from cellsearch.train import reference

    kind = _device_kind(args.device)
    figure = reference.load(kind, "arith")
    if figure is None or args.executor != "dask-local":
        return figure
    if kind != "cuda":
        return None  # (CPU workers train on a core each, not as the bench does)
    from cellsearch.executors.dask import visible_gpus

    gpus = min(args.workers or len(visible_gpus()), len(visible_gpus()))
    return {**figure, "tokens_per_second": figure["tokens_per_second"] * gpus, "gpus": gpus}


def _device_kind(device: str) -> str:
    """"cuda" or "cpu": where `--device` trains in this process."""
    return "cuda" if on_gpu(device) else "cpu"


def _check_start(config: SearchConfig, args: argparse.Namespace) -> MutateFunction:
    """What would otherwise fail every evaluation or step, all reported at once: the evaluator
    and its options, the mutation operator (returned, resolved), and, for the default trainer,
    the device and every task's data (downloaded now when missing, once, rather than by each
    worker)."""
    problems: list[str] = []
    gathered(problems, check_evaluator, config)
    mutate = gathered(problems, check_mutator, config)
    if config.evaluator == DEFAULT_EVALUATOR:
        from cellsearch.train.evaluate import check_training

        check_training(problems, args.device, (*config.tasks, config.filter_task), args.data_dir)
    if problems:
        raise UserError("\n".join(problems))
    return mutate


class _Display:
    """A rich live progress line on stderr and one printed line per completed step. With a
    `reference` (`train.reference`: one cell's throughput in `cellsearch bench` on this machine,
    times its `gpus` for a local Dask cluster), the tokens/s are also shown as a share of it:
    how much of the devices the search uses."""

    def __init__(self, quiet: bool, reference: dict | None = None):
        self.quiet, self.reference = quiet, reference
        self.progress = None
        self.task = None
        self.started = time.monotonic()
        self.trained = 0  # settings trained by this process (not answered from storage)
        self.tokens = 0  # their training timesteps (rows x unrolled steps x windows)

    def __enter__(self) -> _Display:
        if not self.quiet:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True, soft_wrap=True),
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc_info)

    def show(self, event: Event) -> None:
        if self.progress is None:
            return
        progress = self.progress
        if isinstance(event, SearchStarted):
            max_steps = event.config.max_steps
            verb = "resuming" if event.resumed else "starting"
            progress.console.print(
                f"{verb} run {event.run_id} at step {event.step}"
                f" ({event.total_evaluations} evaluations stored)"
            )
            self.task = progress.add_task(
                "search",
                total=None if max_steps is None else max_steps + 1,
                completed=event.step,
            )
        elif isinstance(event, StageStarted) and event.replayed:
            progress.console.print(
                f"step {event.step} {event.stage}: {event.replayed} settings from storage"
            )
        elif isinstance(event, JobCompleted):
            self.trained += len(event.results)
            self.tokens += sum(result.tokens for result in event.results)
            seconds = time.monotonic() - self.started
            share = ""
            if self.reference is not None:
                gpus = self.reference.get("gpus", 1)
                share = (f" ({self.tokens / seconds / self.reference['tokens_per_second']:.0%}"
                         f" of bench K={self.reference['population']}"
                         f"{f' x {gpus} GPUs' if gpus > 1 else ''})")
            progress.update(
                self.task,
                description=f"{event.steps_in_flight} steps running,"
                f" {self.trained * 3600 / seconds:,.0f} settings/h,"
                f" {self.tokens / seconds / 1e6:,.2f}M tokens/s{share}",
            )
        elif isinstance(event, StepCompleted):
            record = event.record
            best = _number(event.top_list[0].fitness) if event.top_list else "-"
            progress.console.print(
                f"step {record.step:>4} {record.kind:<10} {record.outcome:<15}"
                f" {record.description}  [best {best}]"
            )
            progress.advance(self.task)


# -- top and stats ------------------------------------------------------------------------------


def run_top_command(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    with open_storage(args.db, create=False) as storage:
        run = select_run(storage)
        ranked = top_architectures(storage, run.run_id, limit=args.n)
    if args.json:
        print(json.dumps([entry.to_dict() for entry in ranked], indent=2))
    else:
        print(format_top(ranked), end="")
        if ranked and len(ranked) < args.n:
            many = "architecture is" if len(ranked) == 1 else "architectures are"
            print(f"(only {len(ranked)} {many} in the top list so far; -n {args.n} asked for"
                  " more)")
    return 0


def run_stats_command(args: argparse.Namespace) -> int:
    with open_storage(args.db, create=False) as storage:
        figures = statistics(storage, select_run(storage).run_id)
    if args.json:
        print(json.dumps(figures.to_dict(), indent=2))
    else:
        print(format_stats(figures), end="")
    return 0


def format_top(ranked: list[RankedArchitecture]) -> str:
    """One header line per architecture (rank, hash, fitness, ratio per task, settings, origin)
    and its equations, indented."""
    if not ranked:
        return "the top list is empty: no step has completed yet\n"
    lines = []
    for entry in ranked:
        ratios = "  ".join(f"{task} {_number(value)}" for task, value in entry.ratios.items())
        origin = entry.mutation or ""
        lines.append(
            f"#{entry.rank:<3} {entry.hash[:12]}  fitness {_number(entry.fitness)}  {ratios}"
            f"  ({entry.settings_evaluated} settings)  {origin}".rstrip()
        )
        lines.extend(f"     {line}" for line in entry.equations.splitlines())
    return "\n".join(lines) + "\n"


def format_stats(figures: SearchStatistics) -> str:
    """The §3.4 figures, one per line."""
    rows = [
        ("steps completed", str(figures.steps_completed)),
        (
            "architectures evaluated (LSTM and GRU not counted)",
            str(figures.architectures_evaluated),
        ),
        ("passed the memorization filter (LSTM and GRU not counted)", str(figures.passed_filter)),
        (
            "settings per architecture (mean task settings, of those that passed)",
            _number(figures.settings_per_architecture, 1),
        ),
        ("total evaluations", str(figures.total_evaluations)),
        ("  LSTM and GRU at step 0", str(figures.initial_evaluations)),
        ("  memorization filter runs", str(figures.filter_evaluations)),
        ("  task evaluations of later steps", str(figures.task_evaluations)),
        ("failed or diverged evaluations", str(figures.failed_evaluations)),
        ("time from the first stored evaluation to the last", _duration(figures.hours)),
        ("  evaluations per hour", _number(figures.evaluations_per_hour, 0)),
        ("  training tokens per second", _number(figures.tokens_per_second, 0)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"run {figures.run_id}"] + [f"{label:<{width}}  {value}" for label, value in rows]
    if figures.step_outcomes:
        outcomes = ", ".join(
            f"{name} {count}" for name, count in sorted(figures.step_outcomes.items())
        )
        lines.append(f"{'step outcomes':<{width}}  {outcomes}")
    return "\n".join(lines) + "\n"


def _duration(hours: float) -> str:
    if math.isnan(hours):
        return "-"
    return f"{hours * 60:.1f} min" if hours < 1 else f"{hours:.2f} h"


def _number(value: float, digits: int = 4) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"
