"""What `cellsearch report` computes from a database, as plain values: the paper's tables from our
own evaluations beside the paper's numbers, and for a search its §3.4 statistics, its funnel and
the rank correlation between tasks.

Every number names the evaluations it comes from: a table entry is one evaluation (the best of
`settings` counted ones, chosen by validation), identified by its settings key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from cellsearch.cells import zoo
from cellsearch.evaluation.result import json_number
from cellsearch.report.paper import TABLES, Column, Table
from cellsearch.report.reproduce import REPRODUCTION
from cellsearch.search.config import SearchConfig
from cellsearch.search.history import History
from cellsearch.search.procedure import ADDED, initial_hashes
from cellsearch.search.summary import SearchStatistics, statistics
from cellsearch.storage.base import Storage
from cellsearch.storage.records import FILTER_FAILED, FILTER_PASSED, EvaluationRecord


@dataclass(frozen=True)
class Entry:
    """One table entry: `value` of the best counted evaluation (NaN if none), out of `settings`
    counted ones; `settings_key` identifies the evaluation it comes from."""

    value: float
    settings: int
    settings_key: str | None = None
    paper: float | None = None


@dataclass(frozen=True)
class Row:
    label: str  # a zoo name, or a search's "#rank hash"
    architecture_hash: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class TableReport:
    table: Table
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Funnel:
    """How a search's candidates fared, stage by stage (§3.1)."""

    proposed: int
    failed_filter: int
    passed_filter: int
    passed_tasks: tuple[tuple[str, int], ...]  # (task, candidates past it and every earlier one)
    entered_top: int


@dataclass(frozen=True)
class Report:
    kind: str  # "search" or "reproduction"
    run_id: int
    tables: tuple[TableReport, ...]
    statistics: SearchStatistics | None = None
    funnel: Funnel | None = None
    # (task a, task b, Spearman's rho, architectures) over architectures with results on both
    correlations: tuple[tuple[str, str, float, int], ...] = ()
    best_fitness: tuple[tuple[int, float], ...] = field(default_factory=tuple)  # (step, fitness)


def best_entry(records: Iterable[EvaluationRecord], column: Column) -> Entry:
    """The column's value for one architecture's `records`: the counted evaluation with the best
    validation `column.metric` (lowest nll, highest accuracy), its `column.split` value."""
    counted = [
        record
        for record in records
        if record.task == column.task and column.counts(record.result.settings)
    ]
    scored = [
        record
        for record in counted
        if math.isfinite(record.result.valid.get(column.metric, math.nan))
    ]
    if not scored:
        return Entry(math.nan, len(counted))
    sign = 1.0 if column.lower_is_better else -1.0
    best = min(
        scored, key=lambda r: (sign * r.result.valid[column.metric], r.result.settings.key())
    )
    values = best.result.valid if column.split == "valid" else best.result.test
    return Entry(values.get(column.metric, math.nan), len(counted), best.result.settings.key())


def build_report(storage: Storage, run_id: int, top: int = 3) -> Report:
    """The report of run `run_id` (a search or a reproduction)."""
    run = storage.get_run(run_id)
    evaluations = storage.get_evaluations(run_id)
    architectures = {record.hash: record for record in storage.get_architectures(run_id)}
    zoo_hashes = {zoo.get(name).canonical_hash(): name for name in zoo.names()}
    labels = {h: name for h, name in zoo_hashes.items() if h in architectures}
    if run.kind == REPRODUCTION:
        tables = tuple(
            _table(table, labels, [e for e in evaluations if e.step == table.number])
            for table in TABLES.values()
        )
        return Report("reproduction", run_id, tuple(t for t in tables if _has_values(t)))

    search = SearchConfig.from_dict(run.config)
    last = storage.last_completed_step(run_id)
    for rank, entry in enumerate(storage.get_top_list(run_id)[:top], start=1):
        labels.setdefault(entry.architecture_hash, f"#{rank} {entry.architecture_hash[:10]}")
    table = _table(TABLES[1], labels, evaluations)
    history = History()
    for record in evaluations:
        history.add(record.architecture_hash, record.result, record.step)
    return Report(
        "search",
        run_id,
        (table,) if _has_values(table) else (),
        statistics=statistics(storage, run_id),
        funnel=_funnel(storage, run_id, search, history),
        correlations=_correlations(history, search.tasks, architectures),
        best_fitness=tuple(
            (step, entries[0].fitness)
            for step in range(0 if last is None else last + 1)
            if (entries := storage.get_top_list(run_id, step))
        ),
    )


def _table(
    table: Table, labels: dict[str, str], evaluations: list[EvaluationRecord]
) -> TableReport:
    by_architecture: dict[str, list[EvaluationRecord]] = {}
    for record in evaluations:
        by_architecture.setdefault(record.architecture_hash, []).append(record)
    order = {name: index for index, name in enumerate(zoo.names())}
    rows = []
    for architecture_hash, label in sorted(
        labels.items(), key=lambda item: (order.get(item[1], len(order)), item[1])
    ):
        paper = table.paper.get(label)
        entries = tuple(
            replace(
                best_entry(by_architecture.get(architecture_hash, ()), column),
                paper=paper[index] if paper else None,
            )
            for index, column in enumerate(table.columns)
        )
        rows.append(Row(label, architecture_hash, entries))
    return TableReport(table, tuple(rows))


def _has_values(report: TableReport) -> bool:
    return any(entry.settings for row in report.rows for entry in row.entries)


def _funnel(storage: Storage, run_id: int, config: SearchConfig, history: History) -> Funnel:
    initial, reference = initial_hashes()
    candidates = [
        record for record in storage.get_architectures(run_id) if record.hash not in initial
    ]
    passed = [record.hash for record in candidates if record.filter_outcome == FILTER_PASSED]
    stages = []
    remaining = passed
    for task in config.tasks:
        remaining = [
            h for h in remaining if history.ratio(h, reference, task) > config.task_threshold
        ]
        stages.append((task, len(remaining)))
    entered = {
        step.architecture_hash for step in storage.get_steps(run_id) if step.outcome == ADDED
    }
    return Funnel(
        proposed=len(candidates),
        failed_filter=sum(1 for record in candidates if record.filter_outcome == FILTER_FAILED),
        passed_filter=len(passed),
        passed_tasks=tuple(stages),
        entered_top=len(entered - set(initial)),
    )


def _correlations(
    history: History, tasks: tuple[str, ...], architectures: Iterable[str]
) -> tuple[tuple[str, str, float, int], ...]:
    from scipy.stats import spearmanr

    pairs = []
    for index, first in enumerate(tasks):
        for second in tasks[index + 1 :]:
            values = [
                (history.best_value(h, first), history.best_value(h, second))
                for h in architectures
            ]
            values = [(a, b) for a, b in values if math.isfinite(a) and math.isfinite(b)]
            rho = float(spearmanr(*zip(*values)).statistic) if len(values) >= 3 else math.nan
            pairs.append((first, second, rho, len(values)))
    return tuple(pairs)


def report_dict(report: Report) -> dict[str, Any]:
    """The report as JSON values (NaN as null)."""

    data: dict[str, Any] = {
        "kind": report.kind,
        "run_id": report.run_id,
        "tables": [
            {
                "table": t.table.number,
                "title": t.table.title,
                "columns": [column.name for column in t.table.columns],
                "rows": [
                    {
                        "label": row.label,
                        "architecture_hash": row.architecture_hash,
                        "entries": [
                            {
                                "value": json_number(entry.value),
                                "paper": json_number(entry.paper),
                                "settings": entry.settings,
                                "settings_key": entry.settings_key,
                            }
                            for entry in row.entries
                        ],
                    }
                    for row in t.rows
                ],
            }
            for t in report.tables
        ],
    }
    if report.statistics is not None:
        data["statistics"] = report.statistics.to_dict()
    if report.funnel is not None:
        data["funnel"] = {
            **{key: getattr(report.funnel, key) for key in ("proposed", "failed_filter",
                                                            "passed_filter", "entered_top")},
            "passed_tasks": [list(stage) for stage in report.funnel.passed_tasks],
        }
    if report.correlations:
        data["correlations"] = [
            {"tasks": [a, b], "spearman": json_number(rho), "architectures": n}
            for a, b, rho, n in report.correlations
        ]
    return data
