"""The search driver: starts or resumes a run in a storage and carries out each step's requests
with an executor. It is the only writer of the storage.

Resume, in full. The storage tells which step completed last (n - 1). Evaluations of steps before
n, the architectures first proposed before n and the top list after step n - 1 rebuild the
`Search` exactly as an uninterrupted run had it when step n began. Evaluations already stored
for step n (it was in flight when the search was killed) are held apart, and step n is planned
again from its start: the plan is deterministic, so it asks for the same jobs, and every setting
whose result is stored is answered from storage instead of being trained again. Only the rest
goes to the executor. Each job's results are committed in one transaction before the search sees
them, and a step closes with one transaction holding its record and the new top list. Killing the
process at any moment therefore loses at most the jobs that were running, and repeats nothing
that completed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

from cellsearch.errors import UserError
from cellsearch.executors.base import EvaluationJob, Executor, check_options, resolve_function
from cellsearch.search.config import RESERVED_OPTIONS, RESUMABLE_KEYS, SearchConfig, load_config
from cellsearch.search.history import History
from cellsearch.search.procedure import (
    CompleteStep,
    Evaluate,
    MutateFunction,
    RecordArchitecture,
    RecordFilterOutcome,
    Request,
    Search,
)
from cellsearch.storage.base import Storage
from cellsearch.storage.records import StepRecord, TopEntry
from cellsearch.train.result import Result

Triple = tuple[str, str, str]  # (architecture hash, task, settings key)


# -- events, for a progress display -------------------------------------------------------------


@dataclass(frozen=True)
class SearchStarted:
    run_id: int
    step: int  # the step about to run
    resumed: bool
    total_evaluations: int
    config: SearchConfig


@dataclass(frozen=True)
class StageStarted:
    step: int
    stage: str
    settings: int  # settings to train now
    replayed: int  # settings answered from storage (a resumed step)


@dataclass(frozen=True)
class JobCompleted:
    step: int
    stage: str
    job: EvaluationJob
    results: tuple[Result, ...]
    total_evaluations: int


@dataclass(frozen=True)
class StepCompleted:
    record: StepRecord
    top_list: tuple[TopEntry, ...]
    total_evaluations: int


Event = SearchStarted | StageStarted | JobCompleted | StepCompleted


@dataclass(frozen=True)
class SearchSummary:
    """What one call of `run_search` did."""

    run_id: int
    steps_run: int
    last_step: int | None  # the last completed step of the run
    total_evaluations: int
    top_list: tuple[TopEntry, ...]


# -- starting and resuming ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """A run about to start or resume: `run_id` None for a new run; `config` as it will run."""

    run_id: int | None
    config: SearchConfig
    stored: SearchConfig | None  # the resumed run's configuration before this start


def plan_run(
    storage: Storage,
    *,
    preset: str | None = None,
    config_path: str | None = None,
    assignments: Iterable[str] = (),
) -> RunPlan:
    """Decide, without writing, which run to go on with: a new one configured from preset, file
    and assignments, or the storage's latest run, whose stored configuration those may change
    only in `RESUMABLE_KEYS` (UserError naming every other key that differs).

    A stored run that has done nothing yet (no completed step, no evaluation; a start that was
    stopped before its first job finished) takes any change: nothing stored depends on its
    configuration, and refusing would lock the database to a configuration that never ran."""
    run = storage.latest_run()
    if run is None:
        return RunPlan(
            None, load_config(preset=preset, path=config_path, assignments=assignments), None
        )
    stored = SearchConfig.from_dict(run.config)
    config = load_config(base=run.config, preset=preset, path=config_path, assignments=assignments)
    if (
        storage.last_completed_step(run.run_id) is None
        and storage.count_evaluations(run.run_id) == 0
    ):
        return RunPlan(run.run_id, config, stored)
    changed = [key for key in stored.differing_keys(config) if key not in RESUMABLE_KEYS]
    if changed:
        stored_values, given = stored.to_dict(), config.to_dict()
        details = "; ".join(
            f"{key}: stored {stored_values[key]!r}, given {given[key]!r}" for key in changed
        )
        raise UserError(
            f"this database holds a run with a different configuration ({details}); only"
            f" {', '.join(sorted(RESUMABLE_KEYS))} may change when resuming;"
            " use a new --db for a new search"
        )
    return RunPlan(run.run_id, config, stored)


def start_run(storage: Storage, plan: RunPlan) -> int:
    """Create the planned run, or store the resumed run's changed budget; return the run id."""
    if plan.run_id is None:
        return storage.create_run(plan.config.to_dict())
    if plan.config != plan.stored:
        storage.update_run_config(plan.run_id, plan.config.to_dict())
    return plan.run_id


def open_run(
    storage: Storage,
    *,
    preset: str | None = None,
    config_path: str | None = None,
    assignments: Iterable[str] = (),
) -> tuple[int, SearchConfig]:
    """`plan_run` then `start_run`: (run id, config)."""
    plan = plan_run(storage, preset=preset, config_path=config_path, assignments=assignments)
    return start_run(storage, plan), plan.config


def load_state(
    storage: Storage, run_id: int, config: SearchConfig, mutate: MutateFunction
) -> tuple[Search, int, dict[Triple, Result]]:
    """(the Search as it stood after the last completed step, the next step, the stored results
    of that next step, by triple, to answer its replayed requests)."""
    last = storage.last_completed_step(run_id)
    step = 0 if last is None else last + 1
    history = History()
    replay: dict[Triple, Result] = {}
    for record in storage.get_evaluations(run_id):
        if record.step < step:
            history.add(record.architecture_hash, record.result)
        else:
            replay[record.architecture_hash, record.task, record.settings_key] = record.result
    architectures = {
        record.hash: record
        for record in storage.get_architectures(run_id)
        if record.created_step < step
    }
    search = Search(
        config,
        mutate,
        architectures=architectures,
        history=history,
        top_list=storage.get_top_list(run_id) if last is not None else (),
    )
    return search, step, replay


def check_evaluator(config: SearchConfig) -> None:
    """UserError unless `config.evaluator` imports and takes every option the search will pass
    it: found here, a mistake stops the start instead of becoming one recorded failure per
    setting."""
    # run_job passes device and data_dir; the filter stage adds stop_at (see procedure).
    options = [*RESERVED_OPTIONS, *config.evaluation_options]
    check_options(resolve_function(config.evaluator), options)


def budget_left(config: SearchConfig, step: int, total_evaluations: int) -> bool:
    """Whether step `step` may start. Step 0 always may; a later step needs `step <= max_steps`
    and fewer than `max_evaluations` stored evaluations."""
    if step == 0:
        return True
    if config.max_steps is not None and step > config.max_steps:
        return False
    return config.max_evaluations is None or total_evaluations < config.max_evaluations


# -- running ------------------------------------------------------------------------------------


def run_search(
    storage: Storage,
    run_id: int,
    config: SearchConfig,
    executor: Executor,
    *,
    mutate: MutateFunction | None = None,
    on_event: Callable[[Event], None] | None = None,
    evaluator_checked: bool = False,
) -> SearchSummary:
    """Run steps of run `run_id` until the budget is spent (or forever without one), starting
    where the storage says the run stands. `mutate` defaults to `config.mutator`;
    `evaluator_checked` says the caller has run `check_evaluator(config)` already."""
    if mutate is None:
        mutate = resolve_function(config.mutator)
    if not evaluator_checked:
        check_evaluator(config)
    emit = on_event or (lambda event: None)
    search, step, replay = load_state(storage, run_id, config, mutate)
    driver = _StepDriver(storage, run_id, executor, emit, storage.count_evaluations(run_id))
    emit(
        SearchStarted(
            run_id,
            step,
            resumed=step > 0 or bool(replay),
            total_evaluations=driver.total,
            config=config,
        )
    )
    steps_run = 0
    while budget_left(config, step, search.history.total):
        driver.run(search.step(step), replay)
        replay = {}
        steps_run += 1
        step += 1
    return SearchSummary(
        run_id, steps_run, storage.last_completed_step(run_id), driver.total, search.top_list
    )


class _StepDriver:
    """Carries out the requests of step plans against one storage and executor."""

    def __init__(
        self,
        storage: Storage,
        run_id: int,
        executor: Executor,
        emit: Callable[[Event], None],
        total: int,
    ):
        self.storage, self.run_id, self.executor, self.emit = storage, run_id, executor, emit
        self.total = total

    def run(self, plan: Any, replay: dict[Triple, Result]) -> None:
        reply: Any = None
        while True:
            try:
                request: Request = plan.send(reply)
            except StopIteration:
                return
            reply = self.perform(request, replay)

    def perform(self, request: Request, replay: dict[Triple, Result]) -> Any:
        if isinstance(request, RecordArchitecture):
            self.storage.add_architecture(self.run_id, request.record)
        elif isinstance(request, RecordFilterOutcome):
            self.storage.set_filter_outcome(self.run_id, request.architecture_hash, request.outcome)
        elif isinstance(request, Evaluate):
            return self.evaluate(request, replay)
        elif isinstance(request, CompleteStep):
            self.storage.complete_step(self.run_id, request.record, request.top_list)
            self.emit(StepCompleted(request.record, request.top_list, self.total))
        else:
            raise TypeError(f"unknown search request {request!r}")
        return None

    def evaluate(self, request: Evaluate, replay: dict[Triple, Result]) -> list[list[Result]]:
        """Answer each job from storage where it holds the result, run the rest, commit each job
        as it completes, and return the results per job in settings order."""
        answers: list[dict[str, Result]] = []
        pending: dict[Any, tuple[int, EvaluationJob]] = {}  # future -> (index, job)
        missing_jobs: list[tuple[int, EvaluationJob]] = []
        replayed = 0
        for index, job in enumerate(request.jobs):
            known = {
                settings.key(): replay[job.architecture_hash, job.task, settings.key()]
                for settings in job.settings
                if (job.architecture_hash, job.task, settings.key()) in replay
            }
            replayed += len(known)
            answers.append(known)
            missing = tuple(settings for settings in job.settings if settings.key() not in known)
            if missing:
                missing_jobs.append((index, replace(job, settings=missing)))
        self.emit(
            StageStarted(
                request.step,
                request.stage,
                sum(len(job.settings) for _, job in missing_jobs),
                replayed,
            )
        )
        for index, job in missing_jobs:
            pending[self.executor.submit(job)] = (index, job)
        for future in self.executor.as_completed(list(pending)):
            index, job = pending[future]
            results: Sequence[Result] = future.result()
            self.storage.add_evaluations(self.run_id, job.architecture_hash, request.step, results)
            self.total += len(results)
            answers[index].update((result.settings.key(), result) for result in results)
            self.emit(JobCompleted(request.step, request.stage, job, tuple(results), self.total))
        return [
            [answers[index][settings.key()] for settings in job.settings]
            for index, job in enumerate(request.jobs)
        ]
