"""Regularized evolution, the second search algorithm (`algorithm = "regularized-evolution"`):
tournament parents, every admitted child joins, the oldest member leaves; driven, stored and
resumed by the same driver as the paper's procedure. Fake trainer and mutation
(tests/search/fake.py)."""

from __future__ import annotations

import random

import pytest

from cellsearch.errors import UserError
from cellsearch.executors import InProcessExecutor
from cellsearch.search import algorithm, config, open_run, run_search
from cellsearch.search.evolution import RegularizedEvolution
from cellsearch.search.history import fitness_order
from cellsearch.search.procedure import ADDED, MUTATE, REEVALUATE, Search
from cellsearch.storage import InMemoryStorage
from tests.search.test_driver import SMALL_RUN, Crash, contents

RUN = [*SMALL_RUN, "algorithm=regularized-evolution", "tournament_size=2", "max_steps=30",
       "top_size=3"]


def run(assignments, storage=None):
    storage = storage or InMemoryStorage()
    run_id, config_ = open_run(storage, assignments=assignments)
    run_search(storage, run_id, config_, InProcessExecutor())
    return storage


def test_every_registered_algorithm_is_a_choice_of_the_configuration(monkeypatch):
    assert algorithm.algorithm_class("paper") is Search
    assert algorithm.algorithm_class("regularized-evolution") is RegularizedEvolution
    # a new algorithm is one module and one entry of the registry
    monkeypatch.setitem(algorithm.ALGORITHMS, "mine", "tests.search.test_evolution:Mine")
    assert config.SearchConfig(algorithm="mine").algorithm == "mine"
    assert algorithm.algorithm_class("mine") is Mine
    with pytest.raises(UserError, match="algorithm must be one of paper, regularized-evolution"):
        config.SearchConfig(algorithm="simulated-annealing")


class Mine(RegularizedEvolution):
    """(a stand-in for a new algorithm)"""


@pytest.mark.parametrize("in_flight", [1, 4])
def test_parents_win_tournaments_children_join_and_the_oldest_member_leaves(in_flight):
    storage = run([*RUN, f"steps_in_flight={in_flight}"])
    steps = storage.get_steps(1)
    assert [s.kind for s in steps[1:]] == [MUTATE] * 30  # it never re-evaluates
    created = {a.hash: a.created_step for a in storage.get_architectures(1)}
    added = 0
    for step in steps[1:]:
        seen = max(0, step.step - in_flight)
        population = sorted(storage.get_top_list(1, seen), key=lambda e: e.architecture_hash)
        # the parent: the fittest of `tournament_size` members drawn with the step's generator
        choose = random.Random(f"cellsearch:0:{step.step}:choose")
        drawn = [choose.choice(population) for _ in range(2)]
        parent = min(drawn, key=lambda e: (fitness_order(e.fitness), e.architecture_hash))
        if step.outcome == "mutation-failed":
            assert step.architecture_hash == parent.architecture_hash
        else:  # "new child <hash> of <parent>"
            assert f" of {parent.architecture_hash[:12]}" in step.description
        before = {e.architecture_hash for e in storage.get_top_list(1, step.step - 1)}
        after = {e.architecture_hash for e in storage.get_top_list(1, step.step)}
        assert len(after) <= 3
        if step.outcome == ADDED:
            added += 1
            assert step.architecture_hash in after
            gone = before - after
            if len(before) == 3:  # full: the oldest member left, whatever its fitness
                (left,) = gone
                assert created[left] == min(created[h] for h in before)
        else:
            assert after == before
    assert added >= 3  # (the test saw children join and members age out)


def test_a_killed_evolution_resumes_to_the_uninterrupted_run():
    whole = contents(run(RUN))
    storage = InMemoryStorage()
    run_id, config_ = open_run(storage, assignments=RUN)

    class Killing(InProcessExecutor):
        jobs = 0

        def submit(self, job):
            Killing.jobs += 1
            if Killing.jobs == 25:
                raise Crash()
            return super().submit(job)

    with pytest.raises(Crash):
        run_search(storage, run_id, config_, Killing())
    run_search(storage, run_id, config_, InProcessExecutor())
    assert contents(storage) == whole


def test_the_paper_algorithm_is_the_default_and_re_evaluates():
    steps = run(SMALL_RUN).get_steps(1)
    assert REEVALUATE in {s.kind for s in steps}
