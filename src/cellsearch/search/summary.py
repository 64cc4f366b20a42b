"""What a stored search found, as plain values: the ranked top list with per-task ratios and
equations (`cellsearch top`), and the statistics of §3.4 (`cellsearch stats`).

Reads only; everything is computed from the storage, so it works while a search is running in
another process and after it has ended.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from cellsearch.errors import UserError
from cellsearch.evaluation.result import json_number
from cellsearch.search.config import SearchConfig
from cellsearch.search.history import History
from cellsearch.search.procedure import initial_hashes
from cellsearch.storage.base import Storage
from cellsearch.storage.records import FILTER_PASSED, EvaluationRecord, RunRecord


@dataclass(frozen=True)
class RankedArchitecture:
    rank: int
    hash: str
    fitness: float
    ratios: dict[str, float]  # task -> best / GRU's best (eq. 1 before the min)
    best: dict[str, float]  # task -> best validation metric
    settings_evaluated: int  # on the search tasks (memorization filter runs not counted)
    equations: str
    parent_hash: str | None
    mutation: str | None

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "hash": self.hash,
            "fitness": json_number(self.fitness),
            "ratios": {task: json_number(value) for task, value in self.ratios.items()},
            "best": {task: json_number(value) for task, value in self.best.items()},
            "settings_evaluated": self.settings_evaluated,
            "equations": self.equations,
            "parent_hash": self.parent_hash,
            "mutation": self.mutation,
        }


@dataclass(frozen=True)
class SearchStatistics:
    """§3.4's figures for one run, plus how its steps went.

    As in §3.4 ("we evaluated 10,000 different architectures and 1,000 of them made it past the
    initial filtering stage"), the architecture counts are of candidates: LSTM and GRU, which
    start the search and are exempt from the filter, are counted in neither."""

    run_id: int
    steps_completed: int
    architectures_evaluated: int  # candidates evaluated at least once (LSTM and GRU not counted)
    passed_filter: int  # candidates that passed the memorization filter
    settings_per_architecture: float  # mean task settings of those that passed (NaN if none)
    total_evaluations: int  # initial + filter + task evaluations
    initial_evaluations: int  # step 0: LSTM and GRU on the initial settings of every task
    filter_evaluations: int  # memorization filter runs
    task_evaluations: int  # search-task evaluations of later steps (candidates, re-evaluations)
    failed_evaluations: int  # failed or diverged runs, of any kind, included in the total
    step_outcomes: dict[str, int] = field(default_factory=dict)
    # Throughput, from the stored evaluations' timestamps: from the first to the last (so time the
    # search stood stopped between a crash and its resume counts too); NaN below two evaluations.
    hours: float = math.nan
    evaluations_per_hour: float = math.nan
    tokens_per_second: float = math.nan  # training timesteps x rows, all members together

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        for name in ("settings_per_architecture", "hours", "evaluations_per_hour",
                     "tokens_per_second"):
            data[name] = json_number(data[name])
        return data


def select_run(storage: Storage) -> RunRecord:
    """The run `top` and `stats` report: the latest one."""
    run = storage.latest_run()
    if run is None:
        raise UserError("the database holds no search run yet; start one with `cellsearch search`")
    if run.kind != "search":
        raise UserError(
            f"this database holds a {run.kind}, not a search: see it with `cellsearch report`"
        )
    return run


def top_architectures(
    storage: Storage, run_id: int, limit: int | None = None
) -> list[RankedArchitecture]:
    """The top list after the last completed step, best first, at most `limit` entries, as it
    stood then: its fitness is the one stored with that step, and ratios, best values and
    settings counts come from the evaluations of that step and earlier ones (not from those a
    running search has stored since for the step in progress)."""
    config = SearchConfig.from_dict(storage.get_run(run_id).config)
    last = storage.last_completed_step(run_id)
    history = _history(storage, run_id, last_step=-1 if last is None else last)
    architectures = {record.hash: record for record in storage.get_architectures(run_id)}
    _, reference = initial_hashes()
    entries = storage.get_top_list(run_id)[:limit]
    ranked = []
    for rank, entry in enumerate(entries, start=1):
        record = architectures[entry.architecture_hash]
        ranked.append(
            RankedArchitecture(
                rank=rank,
                hash=entry.architecture_hash,
                fitness=entry.fitness,
                ratios={
                    task: history.ratio(entry.architecture_hash, reference, task)
                    for task in config.tasks
                },
                best={
                    task: history.best_value(entry.architecture_hash, task) for task in config.tasks
                },
                settings_evaluated=sum(
                    history.count(entry.architecture_hash, task) for task in config.tasks
                ),
                equations=record.equations,
                parent_hash=record.parent_hash,
                mutation=record.mutation,
            )
        )
    return ranked


def statistics(storage: Storage, run_id: int) -> SearchStatistics:
    """The §3.4 statistics of run `run_id`, from everything it has stored."""
    config = SearchConfig.from_dict(storage.get_run(run_id).config)
    initial = set(initial_hashes()[0])
    evaluations = storage.get_evaluations(run_id)
    initial_runs = [record for record in evaluations if record.step == 0]
    filter_runs = [record for record in evaluations if record.task == config.filter_task]
    task_settings = Counter(
        record.architecture_hash for record in evaluations if record.task in config.tasks
    )
    evaluated = {record.architecture_hash for record in evaluations} - initial
    candidates = [
        record for record in storage.get_architectures(run_id) if record.hash not in initial
    ]
    passed = [record.hash for record in candidates if record.filter_outcome == FILTER_PASSED]
    steps = storage.get_steps(run_id)
    return SearchStatistics(
        run_id=run_id,
        steps_completed=len(steps),
        architectures_evaluated=sum(1 for record in candidates if record.hash in evaluated),
        passed_filter=len(passed),
        settings_per_architecture=(
            sum(task_settings[name] for name in passed) / len(passed) if passed else math.nan
        ),
        total_evaluations=len(evaluations),
        initial_evaluations=len(initial_runs),
        filter_evaluations=len(filter_runs),
        task_evaluations=len(evaluations) - len(initial_runs) - len(filter_runs),
        failed_evaluations=sum(1 for record in evaluations if not record.result.ok),
        step_outcomes=dict(Counter(step.outcome for step in steps)),
        **_throughput(evaluations),
    )


def _throughput(evaluations: list[EvaluationRecord]) -> dict[str, float]:
    stamps = sorted(datetime.fromisoformat(record.created_at) for record in evaluations
                    if record.created_at)
    seconds = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0.0
    if seconds <= 0:
        return {}
    tokens = sum(record.result.tokens for record in evaluations)
    return {"hours": seconds / 3600, "evaluations_per_hour": len(evaluations) / seconds * 3600,
            "tokens_per_second": tokens / seconds}


def _history(storage: Storage, run_id: int, last_step: int) -> History:
    """The run's evaluations of steps up to `last_step`."""
    history = History()
    for record in storage.get_evaluations(run_id):
        if record.step <= last_step:
            history.add(record.architecture_hash, record.result)
    return history

