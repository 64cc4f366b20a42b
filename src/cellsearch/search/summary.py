"""What a stored search found, as plain values: the ranked top list with per-task ratios and
equations (`cellsearch top`), and the statistics of §3.4 (`cellsearch stats`).

Reads only; everything is computed from the storage, so it works while a search is running in
another process and after it has ended.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from cellsearch.errors import UserError
from cellsearch.search.config import SearchConfig
from cellsearch.search.history import History
from cellsearch.search.procedure import REFERENCE_ARCHITECTURE, initial_architectures
from cellsearch.storage.base import Storage
from cellsearch.storage.records import FILTER_PASSED, RunRecord


@dataclass(frozen=True)
class RankedArchitecture:
    rank: int
    hash: str
    fitness: float
    ratios: dict[str, float]  # task -> best / GRU's best (eq. 1 before the min)
    best: dict[str, float]  # task -> best validation metric
    settings_evaluated: int  # on the search tasks and the filter task together
    equations: str
    parent_hash: str | None
    mutation: str | None

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "hash": self.hash,
            "fitness": _json_number(self.fitness),
            "ratios": {task: _json_number(value) for task, value in self.ratios.items()},
            "best": {task: _json_number(value) for task, value in self.best.items()},
            "settings_evaluated": self.settings_evaluated,
            "equations": self.equations,
            "parent_hash": self.parent_hash,
            "mutation": self.mutation,
        }


@dataclass(frozen=True)
class SearchStatistics:
    """§3.4's figures for one run, plus how its steps went."""

    run_id: int
    steps_completed: int
    architectures_evaluated: int  # proposed and evaluated at least once, LSTM and GRU included
    passed_filter: int  # passed the memorization filter (LSTM and GRU are exempt, not counted)
    settings_per_architecture: float  # mean over those that passed the filter (NaN if none)
    total_evaluations: int
    failed_evaluations: int  # diverged or failed runs, included in the total
    step_outcomes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["settings_per_architecture"] = _json_number(self.settings_per_architecture)
        return data


def select_run(storage: Storage) -> RunRecord:
    """The run `top` and `stats` report: the latest one."""
    run = storage.latest_run()
    if run is None:
        raise UserError("the database holds no search run yet; start one with `cellsearch search`")
    return run


def top_architectures(
    storage: Storage, run_id: int, limit: int | None = None
) -> list[RankedArchitecture]:
    """The top list after the last completed step, best first, at most `limit` entries. Its
    fitness is the one stored with that step; ratios and best values come from every stored
    evaluation (a running search may have added some since)."""
    config = SearchConfig.from_dict(storage.get_run(run_id).config)
    history = _history(storage, run_id)
    architectures = {record.hash: record for record in storage.get_architectures(run_id)}
    reference = initial_architectures()[REFERENCE_ARCHITECTURE].canonical_hash()
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
                    history.count(entry.architecture_hash, task)
                    for task in (*config.tasks, config.filter_task)
                ),
                equations=record.equations,
                parent_hash=record.parent_hash,
                mutation=record.mutation,
            )
        )
    return ranked


def statistics(storage: Storage, run_id: int) -> SearchStatistics:
    """The §3.4 statistics of run `run_id`."""
    evaluations = storage.get_evaluations(run_id)
    per_architecture = Counter(record.architecture_hash for record in evaluations)
    architectures = storage.get_architectures(run_id)
    passed = [record.hash for record in architectures if record.filter_outcome == FILTER_PASSED]
    evaluated = [record for record in architectures if per_architecture[record.hash] > 0]
    steps = storage.get_steps(run_id)
    return SearchStatistics(
        run_id=run_id,
        steps_completed=len(steps),
        architectures_evaluated=len(evaluated),
        passed_filter=len(passed),
        settings_per_architecture=(
            sum(per_architecture[name] for name in passed) / len(passed) if passed else math.nan
        ),
        total_evaluations=len(evaluations),
        failed_evaluations=sum(1 for record in evaluations if not record.result.ok),
        step_outcomes=dict(Counter(step.outcome for step in steps)),
    )


def _history(storage: Storage, run_id: int) -> History:
    history = History()
    for record in storage.get_evaluations(run_id):
        history.add(record.architecture_hash, record.result)
    return history


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else value
