"""The search driver: starts or resumes a run in a storage and carries out its steps' requests
with an executor, up to `steps_in_flight` steps at once. It is the only writer of the storage.

Steps in flight. Step n starts once step n - B has concluded (B = `steps_in_flight`) and every
earlier step evaluating the same architecture has finished; its jobs go to the executor beside
those of the other steps in flight, each job's results are committed as it completes, and a
step whose stage is answered moves on to its next stage at once. Steps conclude (record and top
list, one transaction) in step order. What each step asks for depends only on the configuration
and the steps before n - B (see `procedure.Search`), so the stored run is the same whatever order
the executor finishes jobs in, however many workers it has.

Resume, in full. The storage tells which step concluded last (m). Evaluations of steps up to m,
the architectures first proposed up to m and the top lists after the steps the next ones plan
from rebuild the `Search` exactly as an uninterrupted run had it when step m concluded.
Evaluations already stored for later steps (in flight when the search was killed) are held
apart, and those steps are planned again from their start: the plans are deterministic, so they
ask for the same jobs, and every setting whose result is stored is answered from storage instead
of being trained again. Only the rest goes to the executor. Killing the process at any moment
therefore loses at most the jobs that were running, and repeats nothing that completed.
"""

from __future__ import annotations

import inspect
import random
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Iterable, Sequence

from cellsearch.cells.graph import CellGraph
from cellsearch.errors import UserError
from cellsearch.evaluation.job import EvaluationJob, describe
from cellsearch.evaluation.result import Result
from cellsearch.executors.base import Executor, check_options, resolve_function
from cellsearch.search.algorithm import SearchAlgorithm, algorithm_class
from cellsearch.search.config import (
    RESERVED_OPTIONS,
    RESUMABLE_KEYS,
    SearchConfig,
    load_config,
)
from cellsearch.search.history import History
from cellsearch.search.procedure import (
    CompleteStep,
    Evaluate,
    MutateFunction,
    RecordArchitecture,
    RecordFilterOutcome,
    Request,
    StepEnding,
    initial_hashes,
)
from cellsearch.storage.base import Storage
from cellsearch.storage.records import StepRecord, TopEntry

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
    steps_in_flight: int = 1  # steps still evaluating


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
    if run.kind != "search":
        raise UserError(
            f"this database holds a {run.kind} (cellsearch reproduce), not a search;"
            " use a new --db for `cellsearch search`"
        )
    check_initial_cells(storage, run.run_id)
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


def check_initial_cells(storage: Storage, run_id: int) -> None:
    """UserError when the run began from other LSTM and GRU graphs than the zoo's (a database of
    a cellsearch whose LSTM had the output gate as §2 prints it): resuming would rank every
    candidate against a reference the run never evaluated."""
    stored = {
        record.hash: record.mutation
        for record in storage.get_architectures(run_id)
        if record.created_step == 0 and record.parent_hash is None
    }
    expected, _ = initial_hashes()
    if set(stored) - set(expected):  # (a crash during step 0 may have stored only some)
        names = ", ".join(sorted(str(mutation) for mutation in stored.values()))
        raise UserError(
            f"this database's search began from other initial cells ({names}) than this"
            " cellsearch's LSTM and GRU (the LSTM's output gate is now the sigmoid the paper's"
            " authors trained: docs/fidelity.md); it cannot be resumed, use a new --db"
        )


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
) -> tuple[SearchAlgorithm, int, dict[Triple, Result]]:
    """(the Search as it stood after the last completed step, the next step, the stored results
    of the steps after it, by triple, to answer their replayed requests)."""
    last = storage.last_completed_step(run_id)
    step = 0 if last is None else last + 1
    history = History()
    replay: dict[Triple, Result] = {}
    for record in storage.get_evaluations(run_id):
        if record.step < step:
            history.add(record.architecture_hash, record.result, record.step)
        else:
            replay[record.architecture_hash, record.task, record.settings_key] = record.result
    architectures = {
        record.hash: record
        for record in storage.get_architectures(run_id)
        if record.created_step < step
    }
    # The steps to come plan from the top lists after the last `steps_in_flight` steps.
    top_lists = (
        {}
        if last is None
        else {
            seen: storage.get_top_list(run_id, seen)
            for seen in range(max(0, last - config.steps_in_flight + 1), last + 1)
        }
    )
    search = algorithm_class(config.algorithm)(
        config, mutate, architectures=architectures, history=history, top_lists=top_lists
    )
    return search, step, replay


def check_evaluator(config: SearchConfig) -> None:
    """UserError unless `config.evaluator` imports, can be called as `evaluate(graph, task,
    settings, ...)` and takes every option the search will pass it: found here, a mistake stops
    the start instead of becoming one recorded failure per setting."""
    # run_job passes device and data_dir; the filter stage adds stop_at (see procedure).
    options = [*RESERVED_OPTIONS, *config.evaluation_options]
    function = resolve_function(config.evaluator)
    check_options(function, options)
    try:
        inspect.signature(function).bind(None, None, None, **dict.fromkeys(options))
    except (TypeError, ValueError) as error:
        raise UserError(
            f"search setting evaluator {config.evaluator} cannot be called as"
            f" evaluate(graph, task, settings, {', '.join(f'{name}=...' for name in options)}):"
            f" {error}"
        ) from None


def check_mutator(config: SearchConfig) -> MutateFunction:
    """`config.mutator`, resolved and tried once on the GRU: UserError unless it returns an
    object with a CellGraph `.graph`, as `cellsearch.cells.mutate.mutate` does (else every mutation
    step of the search would fail)."""
    function = resolve_function(config.mutator)
    from cellsearch.search.procedure import initial_architectures

    try:
        child = function(initial_architectures()["gru"], random.Random(0))
    except Exception as error:  # noqa: BLE001 - any failure of the trial is the user's to see
        raise UserError(
            f"search setting mutator {config.mutator} failed on the GRU: {describe(error)}"
        ) from None
    if not isinstance(getattr(child, "graph", None), CellGraph):
        raise UserError(
            f"search setting mutator {config.mutator} must return an object with a CellGraph"
            f" .graph (as cellsearch.cells.mutate:mutate does), got {type(child).__name__}"
        )
    return function


def budget_left(config: SearchConfig, step: int, seen_evaluations: int) -> bool:
    """Whether step `step` may start, its plan seeing `seen_evaluations` stored evaluations.
    Step 0 always may; a later step needs `step <= max_steps` and fewer than `max_evaluations`
    seen evaluations (so the steps in flight may take a run somewhat past it)."""
    if step == 0:
        return True
    if config.max_steps is not None and step > config.max_steps:
        return False
    return config.max_evaluations is None or seen_evaluations < config.max_evaluations


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
    driver = _Driver(storage, run_id, executor, emit, search, replay)
    emit(
        SearchStarted(
            run_id,
            step,
            resumed=step > 0 or bool(replay),
            total_evaluations=driver.total,
            config=config,
        )
    )
    steps_run = driver.run(step)
    return SearchSummary(
        run_id, steps_run, storage.last_completed_step(run_id), driver.total, search.top_list
    )


@dataclass
class _Flight:
    """A step in flight: its plan, what it evaluates, and the stage it waits for."""

    step: int
    plan: Generator[Request, Any, StepEnding]
    targets: frozenset[str]
    stage: Evaluate | None = None
    answers: list[dict[str, Result]] = field(default_factory=list)
    outstanding: int = 0  # jobs of the stage not yet answered
    ending: StepEnding | None = None


class _Driver:
    """Carries out the requests of the steps in flight against one storage and executor."""

    def __init__(
        self,
        storage: Storage,
        run_id: int,
        executor: Executor,
        emit: Callable[[Event], None],
        search: SearchAlgorithm,
        replay: dict[Triple, Result],
    ):
        self.storage, self.run_id, self.executor, self.emit = storage, run_id, executor, emit
        self.search, self.replay = search, replay
        self.total = storage.count_evaluations(run_id)
        self.flights: dict[int, _Flight] = {}
        self.pending: dict[Future, tuple[_Flight, int, EvaluationJob]] = {}

    def run(self, first_step: int) -> int:
        """Run steps from `first_step` until the budget is spent; the number concluded."""
        next_step, concluded = first_step, 0
        unstarted: list[int] = []  # steps the window and budget admit, not started yet
        while True:
            concluded += self._conclude_finished()
            while self._admissible(next_step):
                unstarted.append(next_step)
                next_step += 1
            if self._start_ready(unstarted):
                continue
            if not self.pending:
                if self.flights or unstarted:  # every flight ended, so one of them concludes
                    raise RuntimeError(f"steps {sorted(self.flights)} cannot conclude")
                return concluded
            self._answer(next(iter(self.executor.as_completed(list(self.pending)))))

    # -- steps ------------------------------------------------------------------------------------

    def _admissible(self, step: int) -> bool:
        """Whether the window (step - B has concluded) and the budget let `step` start."""
        search = self.search
        if step == 0:
            return search.completed is None and not self.flights
        if search.completed is None or search.seen_step(step) > search.completed:
            return False
        return budget_left(search.config, step, search.seen_evaluations(step))

    def _start_ready(self, unstarted: list[int]) -> bool:
        """Start, in step order, each step of `unstarted` that no earlier unfinished step shares
        an architecture with; whether any started."""
        busy = set().union(*(f.targets for f in self.flights.values() if f.ending is None))
        started = False
        for step in list(unstarted):
            targets = set(self.search.targets(step))
            if targets & busy:
                busy |= targets  # later steps on these wait for this one
                continue
            unstarted.remove(step)
            self._start(step)
            started = True
            if self.flights[step].ending is None:
                busy |= targets
        return started

    def _start(self, step: int) -> None:
        flight = _Flight(step, self.search.plan(step), frozenset(self.search.targets(step)))
        self.flights[step] = flight
        self._advance(flight, None)

    def _advance(self, flight: _Flight, reply: Any) -> None:
        """Carry out `flight`'s requests until it waits for jobs or its plan ends."""
        while True:
            try:
                request = flight.plan.send(reply)
            except StopIteration as stop:
                flight.ending = stop.value
                return
            if isinstance(request, Evaluate):
                if self._submit(flight, request):
                    return
                reply = self._stage_answers(flight)
            elif isinstance(request, RecordArchitecture):
                self.storage.add_architecture(self.run_id, request.record)
                reply = None
            elif isinstance(request, RecordFilterOutcome):
                self.storage.set_filter_outcome(
                    self.run_id, request.architecture_hash, request.outcome
                )
                reply = None
            else:
                raise TypeError(f"unknown search request {request!r}")

    def _conclude_finished(self) -> int:
        """Conclude, in step order, the steps whose plans have ended; how many."""
        count = 0
        while True:
            following = 0 if self.search.completed is None else self.search.completed + 1
            flight = self.flights.get(following)
            if flight is None or flight.ending is None:
                return count
            conclusion = self.search.conclude(flight.step, flight.ending)
            request = next(conclusion)
            assert isinstance(request, CompleteStep)
            self.storage.complete_step(self.run_id, request.record, request.top_list)
            for _ in conclusion:  # the search takes the committed top list
                pass
            del self.flights[flight.step]
            count += 1
            self.emit(StepCompleted(request.record, request.top_list, self.total))

    # -- evaluations ------------------------------------------------------------------------------

    def _submit(self, flight: _Flight, request: Evaluate) -> int:
        """Answer each of the stage's settings from storage where it holds the result, submit the
        rest; how many jobs were submitted."""
        flight.stage, flight.answers, flight.outstanding = request, [], 0
        replayed = submitted = 0
        for index, job in enumerate(request.jobs):
            known = {
                settings.key(): self.replay.pop((job.architecture_hash, job.task, settings.key()))
                for settings in job.settings
                if (job.architecture_hash, job.task, settings.key()) in self.replay
            }
            replayed += len(known)
            flight.answers.append(known)
            missing = tuple(settings for settings in job.settings if settings.key() not in known)
            if missing:
                remaining = replace(job, settings=missing)
                self.pending[self.executor.submit(remaining)] = (flight, index, remaining)
                flight.outstanding += 1
                submitted += len(missing)
        self.emit(StageStarted(request.step, request.stage, submitted, replayed))
        return flight.outstanding

    def _answer(self, future: Future) -> None:
        """Commit a finished job's results; resume its step when its stage is complete."""
        flight, index, job = self.pending.pop(future)
        results: Sequence[Result] = future.result()
        self.storage.add_evaluations(self.run_id, job.architecture_hash, flight.step, results)
        self.total += len(results)
        flight.answers[index].update((result.settings.key(), result) for result in results)
        flight.outstanding -= 1
        self.emit(
            JobCompleted(
                flight.step,
                flight.stage.stage,
                job,
                tuple(results),
                self.total,
                steps_in_flight=sum(item.ending is None for item in self.flights.values()),
            )
        )
        if flight.outstanding == 0:
            self._advance(flight, self._stage_answers(flight))

    @staticmethod
    def _stage_answers(flight: _Flight) -> list[list[Result]]:
        """The stage's results per job, in settings order."""
        return [
            [flight.answers[index][settings.key()] for settings in job.settings]
            for index, job in enumerate(flight.stage.jobs)
        ]
