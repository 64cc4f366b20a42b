"""`cellsearch reproduce`: the zoo's cells through the evaluations one of the paper's tables needs,
stored like a search's, resumable, and run by any executor.

A reproduction is a storage run whose configuration says so (`kind: reproduction`), with the
seed, the evaluation options and the space overrides it was started with. For table T it trains
every cell on `settings` random settings of each column's space (§3.7's ranges, the table's
schedule of §3.6), the same settings for every cell so that cells are compared on equal terms;
each job's results are committed as it completes, under step T, except failed runs. Starting
again after a crash (or with a larger `settings`) plans the same settings, drawn from a
generator seeded by the seed, the table and the column, and trains only those not stored yet,
failed ones included.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph
from cellsearch.errors import UserError
from cellsearch.evaluation.job import DEFAULT_EVALUATOR, EvaluationJob
from cellsearch.evaluation.result import FAILED, Result
from cellsearch.evaluation.settings import SearchSpace, Settings
from cellsearch.executors.base import Executor
from cellsearch.report.paper import TABLES, Column, Table
from cellsearch.storage.base import Storage
from cellsearch.storage.records import FILTER_EXEMPT, ArchitectureRecord

REPRODUCTION = "reproduction"
DROPOUT_RATES = (0.1, 0.3, 0.5)  # §3.6's nonzero dropout values


@dataclass(frozen=True)
class Reproduction:
    """What a reproduction run was started with (its stored configuration)."""

    seed: int = 0
    evaluation_options: Mapping[str, Any] = field(default_factory=dict)
    space_overrides: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    evaluator: str = DEFAULT_EVALUATOR

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": REPRODUCTION,
            "seed": self.seed,
            "evaluation_options": dict(self.evaluation_options),
            "space_overrides": {
                name: list(values) for name, values in self.space_overrides.items()
            },
            "evaluator": self.evaluator,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reproduction:
        return cls(
            seed=data["seed"],
            evaluation_options=dict(data["evaluation_options"]),
            space_overrides={k: tuple(v) for k, v in data["space_overrides"].items()},
            evaluator=data["evaluator"],
        )


def column_space(
    table: Table, column: Column, overrides: Mapping[str, Sequence[Any]]
) -> SearchSpace:
    """The settings a column's evaluations are drawn from: §3.7's ranges, the table's schedule,
    the column's budget and dropout, then `overrides` (e.g. tiny budgets for a demo)."""
    if table.schedule == "search":
        choices = SearchSpace.for_search(column.task).choices
    else:
        choices = SearchSpace.for_task(column.task).choices
        if column.dropout is False:
            choices["dropout"] = (0.0,)
        elif column.dropout is True:
            choices["dropout"] = DROPOUT_RATES
        if column.num_parameters is not None:
            choices["num_parameters"] = (column.num_parameters,)
    choices.update({name: tuple(values) for name, values in overrides.items()})
    return SearchSpace.for_task(column.task, choices)


def planned_settings(
    table: Table, reproduction: Reproduction, count: int, columns: Sequence[str] | None = None
) -> dict[tuple[str, str], list[Settings]]:
    """(task, space key) -> the `count` settings every cell is trained on, for each distinct
    space of the table's columns (20M-v and 20M-tst share theirs), in column order."""
    planned: dict[tuple[str, str], list[Settings]] = {}
    for column in table.columns:
        if columns is not None and column.name not in columns:
            continue
        space = column_space(table, column, reproduction.space_overrides)
        key = (column.task, repr(sorted(space.choices.items())))
        if key not in planned:
            rng = random.Random(f"cellsearch:reproduce:{reproduction.seed}:{table.number}:{key}")
            planned[key] = space.sample_distinct(rng, count)
    return planned


def plan_jobs(
    table: Table,
    reproduction: Reproduction,
    planned: Mapping[tuple[str, str], Sequence[Settings]],
    cells: Sequence[str],
    stored: set[tuple[str, str, str]],
    job_size: int,
) -> list[EvaluationJob]:
    """The jobs still to run: for each cell and column space, the `planned` settings not in
    `stored` (architecture hash, task, settings key), `job_size` at a time."""
    jobs = []
    options = {"schedule": table.schedule, **reproduction.evaluation_options}
    for (task, _), settings in planned.items():
        for name in cells:
            graph = zoo.get(name)
            architecture = graph.canonical_hash()
            missing = [s for s in settings if (architecture, task, s.key()) not in stored]
            for start in range(0, len(missing), job_size):
                jobs.append(
                    EvaluationJob(
                        architecture_hash=architecture,
                        graph_json=graph.to_json(),
                        task=task,
                        settings=tuple(missing[start : start + job_size]),
                        options=options,
                        evaluator=reproduction.evaluator,
                    )
                )
    return jobs


def open_reproduction(storage: Storage, reproduction: Reproduction) -> int:
    """The storage's reproduction run (UserError if it holds a search, or a reproduction begun
    with other options that has stored evaluations), or a new one; its id."""
    run = storage.latest_run()
    if run is None:
        return storage.create_run(reproduction.to_dict())
    if run.kind != REPRODUCTION:
        raise UserError(
            "this database holds a search, not a reproduction; use a new --db for"
            " `cellsearch reproduce` (`cellsearch report` reads either)"
        )
    stored = Reproduction.from_dict(run.config)
    if stored != reproduction:
        if storage.count_evaluations(run.run_id):
            before, now = stored.to_dict(), reproduction.to_dict()
            details = "; ".join(
                f"{key}: stored {before[key]!r}, given {now[key]!r}"
                for key in before
                if before[key] != now[key]
            )
            raise UserError(
                f"this database's reproduction was started with other options ({details}); the"
                " results would not be comparable: use the same options or a new --db"
            )
        storage.update_run_config(run.run_id, reproduction.to_dict())
    return run.run_id


def run_reproduction(
    storage: Storage,
    executor: Executor,
    table_number: int,
    reproduction: Reproduction,
    *,
    count: int,
    cells: Sequence[str] = zoo.PAPER_CELLS,
    columns: Sequence[str] | None = None,
    job_size: int = 20,
    on_job: Callable[[EvaluationJob, list[Result], int, int], None] | None = None,
) -> tuple[int, int, list[Result]]:
    """Train what table `table_number` still needs; (settings trained now, settings stored
    before, the Results that failed). A failed run (out of memory, a broken worker) says nothing
    of its cell, so it is not stored: the next run trains that setting again. A diverged one is
    stored, as the search stores it. `on_job(job, results, done, total)` after each committed
    job."""
    table = TABLES[table_number]
    run_id = open_reproduction(storage, reproduction)
    known = {record.hash for record in storage.get_architectures(run_id)}
    for name in cells:
        graph = zoo.get(name)
        if graph.canonical_hash() not in known:
            storage.add_architecture(
                run_id,
                ArchitectureRecord(
                    hash=graph.canonical_hash(),
                    graph_json=graph.to_json(),
                    equations=format_graph(graph),
                    mutation=f"zoo cell {name}",
                    filter_outcome=FILTER_EXEMPT,
                ),
            )
    stored = {
        (record.architecture_hash, record.task, record.settings_key)
        for record in storage.get_evaluations(run_id)
    }
    planned = planned_settings(table, reproduction, count, columns)
    jobs = plan_jobs(table, reproduction, planned, cells, stored, job_size)
    total = sum(len(job.settings) for job in jobs)
    everything = len(cells) * sum(len(settings) for settings in planned.values())
    futures = {executor.submit(job): job for job in jobs}
    done = 0
    failed: list[Result] = []
    for future in executor.as_completed(list(futures)):
        job = futures[future]
        results = future.result()
        failed += [result for result in results if result.status == FAILED]
        kept = [result for result in results if result.status != FAILED]
        if kept:
            storage.add_evaluations(run_id, job.architecture_hash, table_number, kept)
        done += len(results)
        if on_job is not None:
            on_job(job, results, done, total)
    return total, everything - total, failed
