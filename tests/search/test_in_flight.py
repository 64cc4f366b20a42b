"""Steps in flight: the driver runs up to `steps_in_flight` steps at once, and the stored run is the
same whatever order the executor finishes their jobs in; each step sees what the procedure says it
sees and nothing an unfinished step could have changed. Fake trainer and mutation
(tests/search/fake.py)."""

from __future__ import annotations

import random
from concurrent.futures import Future

import pytest

from cellsearch.executors import Executor, run_job
from cellsearch.search import open_run, run_search
from cellsearch.search.driver import JobCompleted
from cellsearch.storage import InMemoryStorage
from tests.search.test_driver import SMALL_RUN, contents

RUN = [*SMALL_RUN, "max_steps=24", "job_size=1"]


class ShuffledExecutor(Executor):
    """Runs jobs in this process but finishes them in a seeded random order among those
    submitted, as a pool of workers of different speeds would; records what it trains."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.trained: list[tuple[str, str, str]] = []

    def submit(self, job):
        future: Future = Future()
        future.job = job
        return future

    def as_completed(self, futures):
        futures = list(futures)
        self.rng.shuffle(futures)
        for future in futures:
            if not future.done():
                results = run_job(future.job)
                self.trained += [
                    (future.job.architecture_hash, r.task, r.settings.key()) for r in results
                ]
                future.set_result(results)
            yield future


def run(assignments, executor, storage=None, events=None):
    storage = storage or InMemoryStorage()
    run_id, config = open_run(storage, assignments=assignments)
    run_search(storage, run_id, config, executor, on_event=None if events is None else events.append)
    return storage


@pytest.mark.parametrize("in_flight", [1, 4, 16])
def test_the_stored_run_does_not_depend_on_the_order_jobs_finish_in(in_flight):
    assignments = [*RUN, f"steps_in_flight={in_flight}"]
    runs = [run(assignments, ShuffledExecutor(seed)) for seed in range(3)]
    first = contents(runs[0])
    assert all(contents(storage) == first for storage in runs[1:])
    triples = [evaluation[:3] for evaluation in first[0]]
    assert len(triples) == len(set(triples))  # nothing trained twice


@pytest.mark.parametrize("in_flight", [1, 8])
def test_steps_overlap_up_to_steps_in_flight(in_flight):
    events: list = []
    run([*RUN, f"steps_in_flight={in_flight}"], ShuffledExecutor(1), events=events)
    overlap = max(e.steps_in_flight for e in events if isinstance(e, JobCompleted))
    assert overlap == 1 if in_flight == 1 else 1 < overlap <= in_flight


def test_steps_conclude_in_order_while_steps_on_one_architecture_wait_for_each_other():
    """Steps re-choosing an architecture another step in flight evaluates wait for it (else both
    could draw one setting, which storage refuses); all conclude, in step order."""
    in_flight = 4
    storage = run([*RUN, f"steps_in_flight={in_flight}", "max_steps=30"], ShuffledExecutor(5))
    by_architecture: dict[str, list[int]] = {}
    for evaluation in storage.get_evaluations(1):
        by_architecture.setdefault(evaluation.architecture_hash, []).append(evaluation.step)
    steps = storage.get_steps(1)
    assert [step.step for step in steps] == list(range(31))  # concluded in order, none lost
    shared = [s for s in by_architecture.values() if len(set(s)) > 1]
    assert shared  # the fake family makes steps re-choose architectures: the rule is exercised


def test_a_resumed_window_replays_stored_results_instead_of_training_them_again():
    """Stop a run with steps in flight after some jobs (as a kill would), resume it: the result
    equals an uninterrupted run, and no setting is trained twice."""
    assignments = [*RUN, "steps_in_flight=6"]
    reference = contents(run(assignments, ShuffledExecutor(0)))

    class Stop(BaseException):
        pass

    class StoppingExecutor(ShuffledExecutor):
        def __init__(self, seed, after):
            super().__init__(seed)
            self.after = after

        def as_completed(self, futures):
            for future in super().as_completed(futures):
                if len(self.trained) >= self.after:
                    raise Stop
                yield future

    storage = InMemoryStorage()
    trained: list = []
    for life, after in enumerate([15, 40, 33, 10**6]):
        executor = StoppingExecutor(life, after)
        try:
            run(assignments, executor, storage)
        except Stop:
            pass
        trained += executor.trained
    assert contents(storage) == reference
    # What a life trained but could not commit (the job it stopped in) is trained again; nothing
    # else is.
    assert len(trained) - len(set(trained)) <= 3
