"""`InMemoryStorage`: the storage interface over plain dicts, for tests and throwaway searches.

It keeps the same invariants as `SQLiteStorage` (the conformance suite in `tests/storage` runs
against both) and nothing survives the process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cellsearch.errors import UserError
from cellsearch.evaluation.result import Result
from cellsearch.storage.base import (
    Storage,
    StorageError,
    check_filter_outcome,
    check_next_step,
    duplicate_evaluation,
    utc_now,
)
from cellsearch.storage.records import (
    ArchitectureRecord,
    EvaluationRecord,
    RunRecord,
    StepRecord,
    TopEntry,
)


@dataclass
class _Run:
    record: RunRecord
    architectures: dict[str, ArchitectureRecord] = field(default_factory=dict)
    evaluations: list[EvaluationRecord] = field(default_factory=list)
    triples: set[tuple[str, str, str]] = field(default_factory=set)
    steps: list[StepRecord] = field(default_factory=list)
    top_lists: list[tuple[TopEntry, ...]] = field(default_factory=list)  # one per step


class InMemoryStorage(Storage):
    """A storage that lives in this process only; see the module docstring."""

    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}

    def create_run(self, config: Mapping[str, Any]) -> int:
        run_id = len(self._runs) + 1
        stamp = utc_now()
        self._runs[run_id] = _Run(RunRecord(run_id, _copy_config(config), stamp, stamp))
        return run_id

    def get_runs(self) -> list[RunRecord]:
        return [_copy_run(run.record) for run in self._runs.values()]

    def update_run_config(self, run_id: int, config: Mapping[str, Any]) -> None:
        run = self._run(run_id)
        run.record = dataclasses.replace(
            run.record, config=_copy_config(config), updated_at=utc_now()
        )

    def add_architecture(self, run_id: int, record: ArchitectureRecord) -> bool:
        run = self._run(run_id)
        check_filter_outcome(record.filter_outcome)
        if record.hash in run.architectures:
            return False
        run.architectures[record.hash] = record
        return True

    def get_architectures(self, run_id: int) -> list[ArchitectureRecord]:
        return list(self._run(run_id).architectures.values())

    def set_filter_outcome(self, run_id: int, architecture_hash: str, outcome: str) -> None:
        run = self._run(run_id)
        check_filter_outcome(outcome, required=True)
        if architecture_hash not in run.architectures:
            raise StorageError(f"run {run_id} has no architecture {architecture_hash}")
        record = run.architectures[architecture_hash]
        run.architectures[architecture_hash] = dataclasses.replace(record, filter_outcome=outcome)

    def add_evaluations(
        self, run_id: int, architecture_hash: str, step: int, results: Sequence[Result]
    ) -> None:
        run = self._run(run_id)
        if architecture_hash not in run.architectures:
            raise StorageError(f"run {run_id} has no architecture {architecture_hash}")
        triples = [(architecture_hash, result.task, result.settings.key()) for result in results]
        if len(set(triples)) != len(triples) or run.triples.intersection(triples):
            raise duplicate_evaluation(architecture_hash)
        run.triples.update(triples)
        stamp = utc_now()
        run.evaluations.extend(
            EvaluationRecord(architecture_hash, step, _copy_result(result), stamp)
            for result in results
        )

    def get_evaluations(
        self,
        run_id: int,
        *,
        architecture_hash: str | None = None,
        task: str | None = None,
        step: int | None = None,
    ) -> list[EvaluationRecord]:
        return [
            record
            for record in self._run(run_id).evaluations
            if (architecture_hash is None or record.architecture_hash == architecture_hash)
            and (task is None or record.task == task)
            and (step is None or record.step == step)
        ]

    def count_evaluations(self, run_id: int) -> int:
        return len(self._run(run_id).evaluations)

    def complete_step(self, run_id: int, record: StepRecord, top_list: Sequence[TopEntry]) -> None:
        run = self._run(run_id)
        check_next_step(run_id, record.step, expected=len(run.steps))
        run.steps.append(dataclasses.replace(record, completed_at=utc_now()))
        run.top_lists.append(tuple(top_list))
        run.record = dataclasses.replace(run.record, updated_at=utc_now())

    def get_steps(self, run_id: int) -> list[StepRecord]:
        return list(self._run(run_id).steps)

    def last_completed_step(self, run_id: int) -> int | None:
        steps = self._run(run_id).steps
        return len(steps) - 1 if steps else None

    def get_top_list(self, run_id: int, step: int | None = None) -> list[TopEntry]:
        run = self._run(run_id)
        if step is None:
            return list(run.top_lists[-1]) if run.top_lists else []
        if not 0 <= step < len(run.top_lists):
            raise StorageError(f"run {run_id} has no completed step {step}")
        return list(run.top_lists[step])

    def _run(self, run_id: int) -> _Run:
        if run_id not in self._runs:
            raise StorageError(f"no run {run_id}")
        return self._runs[run_id]


def _copy_config(config: Mapping[str, Any]) -> dict[str, Any]:
    # Through JSON, as SQLite stores it, so both backends hand back the same plain values.
    return json.loads(json.dumps(config))


def _copy_run(record: RunRecord) -> RunRecord:
    return dataclasses.replace(record, config=copy.deepcopy(record.config))


def _copy_result(result: Result) -> Result:
    return dataclasses.replace(result, valid=dict(result.valid), test=dict(result.test))


def open_memory(location: str, *, create: bool = True,
                sole_writer: bool = False) -> InMemoryStorage:
    """`memory://`: a new, empty store that lives as long as the process (`open_storage`)."""
    if location:
        raise UserError(f"memory://{location}: an in-memory store takes no location")
    if not create:
        raise UserError("memory:// holds nothing to read: it lives only within one search")
    return InMemoryStorage()
