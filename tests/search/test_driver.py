"""The driver: determinism, resuming after a crash at any write, budgets, and the configuration
checks of a resumed run. Uses the fake trainer and mutation (tests/search/fake.py)."""

from __future__ import annotations

import math

import pytest

from cellsearch.errors import UserError
from cellsearch.evaluation.result import FAILED
from cellsearch.executors import InProcessExecutor
from cellsearch.search import StepCompleted, open_run, plan_run, run_search
from cellsearch.storage import InMemoryStorage, SQLiteStorage, Storage

FAKES = ["evaluator=tests.search.fake:evaluate", "mutator=tests.search.fake:mutate"]
SMALL_RUN = [
    *FAKES,
    "initial_settings=3",
    "settings_per_task=2",
    "top_size=4",
    "job_size=2",
    "max_steps=14",
]


class Crash(BaseException):
    """Stands for SIGKILL: nothing in the search may catch it."""


class CrashingStorage(Storage):
    """A storage that dies before its `crash_at`-th write (counting from 1)."""

    WRITES = (
        "create_run",
        "update_run_config",
        "add_architecture",
        "set_filter_outcome",
        "add_evaluations",
        "complete_step",
    )

    def __init__(self, inner: Storage, crash_at: int | None):
        self.inner, self.crash_at, self.writes = inner, crash_at, 0

    def __getattribute__(self, name):
        if name in CrashingStorage.WRITES:
            self.writes += 1
            if self.writes == self.crash_at:
                raise Crash(name)
            return getattr(self.inner, name)
        if name in ("inner", "crash_at", "writes", "__dict__", "__class__"):
            return object.__getattribute__(self, name)
        return getattr(self.inner, name)

    # The abstract methods are reached through __getattribute__; these satisfy abc.
    create_run = get_runs = update_run_config = add_architecture = get_architectures = None  # type: ignore
    set_filter_outcome = add_evaluations = get_evaluations = count_evaluations = None  # type: ignore
    complete_step = get_steps = last_completed_step = get_top_list = None  # type: ignore


class CountingExecutor(InProcessExecutor):
    """Counts the settings it trains (an in-process job runs when `as_completed` reaches it)."""

    trained = 0

    def as_completed(self, futures):
        for future in super().as_completed(futures):
            CountingExecutor.trained += len(future.result())
            yield future


def search(storage: Storage, assignments=SMALL_RUN, **kwargs):
    run_id, config = open_run(storage, assignments=assignments)
    return run_search(storage, run_id, config, CountingExecutor(), **kwargs)


def contents(storage: Storage, run_id: int = 1):
    """Everything a run stored that must not depend on interruptions (timestamps aside)."""
    evaluations = sorted(
        (
            e.architecture_hash,
            e.task,
            e.settings_key,
            e.result.settings.seed,
            None if math.isnan(e.value) else e.value,
            e.result.status,
            e.step,
        )
        for e in storage.get_evaluations(run_id)
    )
    steps = [
        (s.step, s.kind, s.architecture_hash, s.outcome, s.description)
        for s in storage.get_steps(run_id)
    ]
    tops = [storage.get_top_list(run_id, step) for step in range(len(steps))]
    architectures = sorted(
        (a.hash, a.parent_hash, a.mutation, a.created_step, a.filter_outcome, a.equations)
        for a in storage.get_architectures(run_id)
    )
    return evaluations, steps, tops, architectures


@pytest.fixture(scope="module")
def reference():
    storage = InMemoryStorage()
    summary = search(storage)
    return contents(storage), summary


def test_the_reference_run_exercises_every_kind_of_step(reference):
    (evaluations, steps, tops, architectures), summary = reference
    assert summary.steps_run == 15 and summary.last_step == 14
    outcomes = {step[3] for step in steps}
    assert {"initialized", "reevaluated", "added"} <= outcomes and outcomes & {
        "below-threshold",
        "filtered-out",
        "not-added",
        "kept",
    }
    triples = [evaluation[:3] for evaluation in evaluations]
    assert len(triples) == len(set(triples)) == summary.total_evaluations
    assert any(status != "ok" for *_, status, _ in evaluations)  # the fake diverges sometimes


def test_the_same_seed_gives_the_same_run(reference):
    storage = InMemoryStorage()
    search(storage)
    assert contents(storage) == reference[0]
    other = InMemoryStorage()
    search(other, [*SMALL_RUN, "seed=1"])
    assert contents(other)[0] != reference[0][0]


def resume_after_crash(make_storage, crash_at: int) -> tuple[Storage, int]:
    """Run with a crash before write `crash_at`, then resume (on a fresh `make_storage()`,
    reopening a file backend) to the end."""
    storage = make_storage()
    try:
        search(CrashingStorage(storage, crash_at))
    except Crash:
        pass
    else:
        return storage, 0
    storage = make_storage()
    search(storage)
    return storage, 1


def test_a_crash_before_any_write_loses_and_repeats_nothing(reference):
    """Kill the search before each of its writes in turn, resume, and compare with the
    uninterrupted run: same evaluations (with seeds, values and steps), steps and top lists."""
    storage = CrashingStorage(InMemoryStorage(), None)
    search(storage)
    writes = storage.writes
    crashed = 0
    for crash_at in range(1, writes + 1):
        backend = InMemoryStorage()

        def make(backend=backend):
            return backend

        CountingExecutor.trained = 0
        resumed, crashes = resume_after_crash(make, crash_at)
        crashed += crashes
        assert contents(resumed) == reference[0], f"crash before write {crash_at}"
        # Trained again: at most the one job whose results the crash kept from being stored.
        assert CountingExecutor.trained - reference[1].total_evaluations <= 2  # job_size
    assert crashed == writes > 50


def test_resuming_from_the_database_file(tmp_path, reference):
    path = tmp_path / "search.db"
    for crash_at in (2, 9, 23, 40, 61):
        path.unlink(missing_ok=True)
        opened: list[SQLiteStorage] = []

        def make(opened=opened):
            opened.append(SQLiteStorage(path))
            return opened[-1]

        resumed, _ = resume_after_crash(make, crash_at)
        assert contents(resumed) == reference[0]
        for storage in opened:
            storage.close()


def test_extending_the_budget_continues_the_same_run(reference):
    storage = InMemoryStorage()
    first = search(storage, [*SMALL_RUN, "max_steps=6"])
    assert first.last_step == 6
    again = search(storage, [*SMALL_RUN, "max_steps=6"])
    assert again.steps_run == 0
    search(storage, [*SMALL_RUN, "max_steps=14"])
    assert contents(storage) == reference[0]
    assert storage.get_run(1).config["max_steps"] == 14


def test_max_evaluations_stops_before_the_next_step():
    storage = InMemoryStorage()
    summary = search(
        storage, [*SMALL_RUN, "max_steps=none", "max_evaluations=30", "steps_in_flight=1"]
    )
    assert summary.total_evaluations >= 30
    without_last = summary.total_evaluations - sum(
        1 for e in storage.get_evaluations(1) if e.step == summary.last_step
    )
    assert without_last < 30


@pytest.mark.parametrize("in_flight", [3, 16])
def test_max_evaluations_with_steps_in_flight_counts_what_each_step_sees(in_flight):
    """Step n sees the steps up to n - B: each step ran while those held fewer than 30, and the
    step after the last would have seen 30 or more."""
    storage = InMemoryStorage()
    summary = search(
        storage,
        [*SMALL_RUN, "max_steps=none", "max_evaluations=30", f"steps_in_flight={in_flight}"],
    )
    steps = [e.step for e in storage.get_evaluations(1)]

    def seen(step):
        return sum(1 for recorded in steps if recorded <= max(0, step - in_flight))

    assert all(seen(step) < 30 for step in range(1, summary.last_step + 1))
    assert seen(summary.last_step + 1) >= 30


def test_a_resumed_run_refuses_another_configuration():
    storage = InMemoryStorage()
    search(storage, [*SMALL_RUN, "max_steps=1"])
    with pytest.raises(UserError, match=r"top_size: stored 4, given 5.*seed: stored 0, given 2"):
        plan_run(storage, assignments=["top_size=5", "seed=2", "max_steps=3"])
    assert storage.get_run(1).config["max_steps"] == 1
    assert plan_run(storage).config.max_steps == 1  # no flags: the stored configuration


def test_a_run_that_stored_no_evaluation_takes_another_configuration(reference):
    # A start that stopped before its first job finished (here: the executor failed at once)
    # stored the run and LSTM and GRU, nothing that depends on the configuration: it may change.
    storage = InMemoryStorage()

    class Unavailable(RuntimeError):
        pass

    class FailingExecutor(InProcessExecutor):
        def submit(self, job):
            raise Unavailable

    run_id, config = open_run(storage, assignments=[*SMALL_RUN, "seed=3", "top_size=2"])
    with pytest.raises(Unavailable):
        run_search(storage, run_id, config, FailingExecutor())
    assert len(storage.get_architectures(run_id)) == 2 and storage.count_evaluations(run_id) == 0
    plan = plan_run(storage, assignments=["seed=0", "top_size=4"])
    assert (plan.run_id, plan.config.seed, plan.config.top_size) == (1, 0, 4)
    assert plan.config.settings_per_task == 2  # the stored configuration is the base
    search(storage, [*SMALL_RUN, "seed=0"])
    assert contents(storage) == reference[0]  # the run the new configuration gives from scratch
    with pytest.raises(UserError, match="seed: stored 0, given 3"):
        plan_run(storage, assignments=["seed=3"])


def test_failed_evaluations_are_recorded_and_the_search_goes_on():
    storage = InMemoryStorage()
    events = []
    summary = search(
        storage,
        [*SMALL_RUN, "evaluator=tests.search.fake:raising_evaluate", "max_steps=4"],
        on_event=events.append,
    )
    assert summary.last_step == 4
    results = [record.result for record in storage.get_evaluations(1)]
    assert results and all(
        result.status == FAILED and "fake trainer broke" in result.reason for result in results
    )
    assert all(math.isnan(entry.fitness) for entry in summary.top_list)
    assert [event.record.step for event in events if isinstance(event, StepCompleted)] == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_a_run_begun_from_other_initial_cells_is_not_resumed():
    """A database made when the zoo's LSTM had §2's printed tanh output gate."""
    from cellsearch.cells import zoo
    from cellsearch.search.procedure import initial_architectures
    from cellsearch.storage import ArchitectureRecord

    storage = InMemoryStorage()
    run_id = storage.create_run({})
    for name, graph in {**initial_architectures(), "lstm": zoo.get("lstm-as-printed")}.items():
        storage.add_architecture(
            run_id,
            ArchitectureRecord(graph.canonical_hash(), graph.to_json(), "", None, f"zoo cell {name}"),
        )
    with pytest.raises(UserError, match="other initial cells.*cannot be resumed"):
        plan_run(storage, assignments=FAKES)
