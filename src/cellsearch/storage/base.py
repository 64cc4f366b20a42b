"""The storage interface every backend implements, and the errors it raises.

Lifecycle (after optuna's `BaseStorage`): only the search driver, in one process, holds a storage
and writes to it; workers never see one. A run goes through these calls, in this order:

    storage = open_storage(path)                   # or SQLiteStorage(...), InMemoryStorage()
    run = storage.latest_run()                     # resume it, or:
    run_id = storage.create_run(config)            # a fresh run, step 0 to come
    loop over steps:
        storage.add_architecture(run_id, record)             # when a step first proposes a cell
        storage.add_evaluations(run_id, hash, step, results) # once per completed job
        storage.set_filter_outcome(run_id, hash, outcome)    # after the memorization filter
        storage.complete_step(run_id, step_record, top_list) # closes the step
    storage.close()

Each write is one transaction: when the call returns, what it wrote survives a crash (SIGKILL,
power loss aside for the in-memory backend, which keeps nothing). The driver uses a result only
after `add_evaluations` has returned, so a search killed at any moment loses no completed
evaluation. Reads (`get_*`, `count_evaluations`, `last_completed_step`) never write, and may run
in other processes (`cellsearch top`) while a search writes.

An (architecture, task, settings key) triple is stored at most once per run (§3.1: "not allowed to
run it with a previously-run hyperparameter configuration"); a second one raises
`DuplicateEvaluationError` and stores nothing of that call.
"""

from __future__ import annotations

import abc
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from cellsearch.evaluation.result import Result
from cellsearch.storage.records import (
    FILTER_OUTCOMES,
    ArchitectureRecord,
    EvaluationRecord,
    RunRecord,
    StepRecord,
    TopEntry,
)


class StorageError(Exception):
    """A call that breaks the storage's invariants (a programming error, not bad user input)."""


class DuplicateEvaluationError(StorageError):
    """An (architecture, task, settings key) triple that the run already holds."""


class Storage(abc.ABC):
    """Persistence of search runs; see the module docstring for the order of calls."""

    # -- runs -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def create_run(self, config: Mapping[str, Any]) -> int:
        """Start a run with `config` (a JSON-serializable mapping); return its id (1, 2, ...)."""

    @abc.abstractmethod
    def get_runs(self) -> list[RunRecord]:
        """All runs, oldest first."""

    def get_run(self, run_id: int) -> RunRecord:
        """The run `run_id`; StorageError when there is none."""
        for run in self.get_runs():
            if run.run_id == run_id:
                return run
        raise StorageError(f"no run {run_id}")

    def latest_run(self) -> RunRecord | None:
        """The newest run, or None in an empty storage."""
        runs = self.get_runs()
        return runs[-1] if runs else None

    @abc.abstractmethod
    def update_run_config(self, run_id: int, config: Mapping[str, Any]) -> None:
        """Replace the stored configuration of a run (the driver does this to change a run's
        budget, or the configuration of a run that has stored no evaluation yet) and touch its
        `updated_at`."""

    # -- architectures ----------------------------------------------------------------------------

    @abc.abstractmethod
    def add_architecture(self, run_id: int, record: ArchitectureRecord) -> bool:
        """Store `record` unless the run already has an architecture with its hash (then keep the
        stored one unchanged). Return whether it was added. Called again with the same record when
        a step is redone after a crash, which must be harmless."""

    @abc.abstractmethod
    def get_architectures(self, run_id: int) -> list[ArchitectureRecord]:
        """The run's architectures in the order they were added."""

    @abc.abstractmethod
    def set_filter_outcome(self, run_id: int, architecture_hash: str, outcome: str) -> None:
        """Record the memorization-filter outcome of a stored architecture (StorageError for an
        unknown hash or an outcome outside `records.FILTER_OUTCOMES`)."""

    # -- evaluations ------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_evaluations(
        self, run_id: int, architecture_hash: str, step: int, results: Sequence[Result]
    ) -> None:
        """Store the results of one job, all or nothing, in one transaction.

        StorageError when the architecture is not stored; DuplicateEvaluationError when a result's
        (task, settings key) is already stored for it or appears twice in `results`.
        """

    @abc.abstractmethod
    def get_evaluations(
        self,
        run_id: int,
        *,
        architecture_hash: str | None = None,
        task: str | None = None,
        step: int | None = None,
    ) -> list[EvaluationRecord]:
        """The run's evaluations matching every filter given, in the order they were stored."""

    @abc.abstractmethod
    def count_evaluations(self, run_id: int) -> int:
        """How many evaluations the run holds."""

    # -- steps and the top list -------------------------------------------------------------------

    @abc.abstractmethod
    def complete_step(self, run_id: int, record: StepRecord, top_list: Sequence[TopEntry]) -> None:
        """Close step `record.step` and record the top list as it stands after it, best first, in
        one transaction. Steps are completed in order 0, 1, 2, ... (StorageError otherwise), so the
        stored steps always tell where a resumed search goes on."""

    @abc.abstractmethod
    def get_steps(self, run_id: int) -> list[StepRecord]:
        """The completed steps, in order."""

    @abc.abstractmethod
    def last_completed_step(self, run_id: int) -> int | None:
        """The number of the last completed step, or None before step 0 has completed."""

    @abc.abstractmethod
    def get_top_list(self, run_id: int, step: int | None = None) -> list[TopEntry]:
        """The top list recorded with step `step` (the last completed step when None), best
        first; empty before step 0 has completed."""

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the backend's resources; the storage is unusable afterwards."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- checks both backends make, so that they refuse the same calls with the same messages ---------


def check_filter_outcome(outcome: str | None, *, required: bool = False) -> None:
    """StorageError unless `outcome` is one of `records.FILTER_OUTCOMES`, or None where it is not
    `required` (a new architecture may have no outcome yet; a recorded one is never reset)."""
    if outcome is None:
        if required:
            raise StorageError("a filter outcome cannot be reset to None")
    elif outcome not in FILTER_OUTCOMES:
        raise StorageError(
            f"unknown filter outcome {outcome!r}; known: {', '.join(FILTER_OUTCOMES)}"
        )


def check_next_step(run_id: int, step: int, expected: int) -> None:
    """StorageError unless `step` is `expected`, the step that comes next (0 in a fresh run)."""
    if step != expected:
        raise StorageError(f"run {run_id}: step {step} completed, expected step {expected}")


def duplicate_evaluation(architecture_hash: str) -> DuplicateEvaluationError:
    """The error for a job whose results repeat a (task, settings key) of `architecture_hash`."""
    return DuplicateEvaluationError(
        f"architecture {architecture_hash} already has an evaluation with one of these"
        " (task, settings) pairs"
    )


def utc_now() -> str:
    """The current time as the storages record it: ISO 8601, UTC, milliseconds (throughput is
    measured from these stamps)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
