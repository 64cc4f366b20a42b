"""The rules of §3.1 step by step: initialization, the memorization filter, the task thresholds,
the top-N rule, re-chosen architectures, re-evaluation and the never-repeat rule. Each test sets
the accuracies exactly and drives `Search` plans by hand (tests/search/scripted.py)."""

from __future__ import annotations

import pytest

from cellsearch.cells import zoo
from cellsearch.evaluation.result import DIVERGED
from cellsearch.search import Search, SearchConfig
from cellsearch.search.procedure import (
    ADDED,
    BELOW_THRESHOLD,
    FILTERED_OUT,
    KEPT,
    MUTATION_FAILED,
    NOT_ADDED,
    REEVALUATED,
    RecordArchitecture,
    RecordFilterOutcome,
)
from cellsearch.storage import FILTER_EXEMPT, FILTER_FAILED, FILTER_PASSED
from tests.search.scripted import (
    CHILD,
    OTHER_CHILD,
    always,
    completion,
    drive,
    evaluations,
    stage_keys,
    top_hashes,
)

LSTM, GRU = (zoo.get(name).canonical_hash() for name in ("lstm", "gru"))
CHILD_HASH, OTHER_HASH = CHILD.canonical_hash(), OTHER_CHILD.canonical_hash()
SMALL = {
    "init_scale": [1.0],
    "learning_rate": [0.1, 0.2, 0.3, 0.5],
    "max_grad_norm": [5.0],
    "num_layers": [1, 2, 3, 4],
    "num_parameters": [5000],
}


def config(**changes) -> SearchConfig:
    settings = dict(
        tasks=("arith", "xml"),
        settings_per_task=4,
        top_size=3,
        job_size=5,
        reevaluate_probability=0.0,
        steps_in_flight=1,  # the sequential procedure; tests/search/test_in_flight.py has the rest
        space_overrides={"arith": SMALL, "xml": SMALL, "memorize": {"num_parameters": [5000]}},
    )
    settings.update(changes)
    return SearchConfig(**settings)


def scorer(memorize=0.99, arith=0.48, xml=0.48, lstm=0.45, gru=0.5):
    """Fixed accuracies: GRU and LSTM on every task, any other architecture per task."""
    child = {"memorize": memorize, "arith": arith, "xml": xml}

    def score(architecture_hash, task, settings):
        value = {GRU: gru, LSTM: lstm}.get(architecture_hash, child.get(task))
        return value(settings) if callable(value) else value

    return score


def started(search_config: SearchConfig, mutate=None, **scores) -> Search:
    """A Search after step 0, its children always `mutate`'s (default: CHILD)."""
    search = Search(search_config, mutate or always(CHILD))
    drive(search, 0, scorer(**scores))
    return search


def test_initialization_evaluates_lstm_and_gru_on_the_whole_grid():
    search = Search(config(), always(CHILD))
    requests = drive(search, 0, scorer())
    recorded = [request.record for request in requests if isinstance(request, RecordArchitecture)]
    assert [record.hash for record in recorded] == [LSTM, GRU]
    assert all(
        record.filter_outcome == FILTER_EXEMPT and record.created_step == 0 for record in recorded
    )
    (stage,) = evaluations(requests)
    grid = sorted(settings.key() for settings in search.config.space("arith").grid())
    for architecture_hash in (LSTM, GRU):
        for task in ("arith", "xml"):
            keys = [
                s.key()
                for job in stage.jobs
                if (job.architecture_hash, job.task) == (architecture_hash, task)
                for s in job.settings
            ]
            assert sorted(keys) == grid
    assert max(len(job.settings) for job in stage.jobs) == 5  # job_size
    top = completion(requests).top_list
    assert top_hashes(top) == [GRU, LSTM] and [entry.fitness for entry in top] == pytest.approx(
        [1.0, 0.9]
    )


def test_initialization_with_a_number_of_settings():
    search = Search(config(initial_settings=3), always(CHILD))
    (stage,) = evaluations(drive(search, 0, scorer()))
    assert sum(len(job.settings) for job in stage.jobs) == 2 * 2 * 3


@pytest.mark.parametrize(("memorize", "passes"), [(0.9499, False), (0.95, True), (0.99, True)])
def test_the_memorization_filter(memorize, passes):
    search = started(config(), memorize=memorize)
    requests = drive(search, 1, scorer(memorize=memorize))
    first = evaluations(requests)[0]
    assert first.stage == "memorize" and [len(job.settings) for job in first.jobs] == [1]
    assert first.jobs[0].settings[0] in search.config.space("memorize")
    assert first.jobs[0].options["stop_at"] == 0.95  # training may stop once the filter is passed
    outcome = [request.outcome for request in requests if isinstance(request, RecordFilterOutcome)]
    assert outcome == [FILTER_PASSED if passes else FILTER_FAILED]
    stages = [request.stage for request in evaluations(requests)]
    if passes:
        assert stages == ["memorize", "arith", "xml"]
    else:
        assert stages == ["memorize"] and completion(requests).record.outcome == FILTERED_OUT


def test_runs_that_diverged_after_good_epochs_count_with_their_best_epoch():
    # Every run of the child diverges, but only after reaching the metrics it reports: it passes
    # the filter and both task thresholds on them, as it would with the same values and "ok".
    search = started(config())
    requests = drive(search, 1, scorer(memorize=0.99, arith=0.48, xml=0.47), status=DIVERGED)
    outcome = [request.outcome for request in requests if isinstance(request, RecordFilterOutcome)]
    assert outcome == [FILTER_PASSED]
    assert [request.stage for request in evaluations(requests)] == ["memorize", "arith", "xml"]
    assert completion(requests).record.outcome == ADDED
    assert search.history.fitness(CHILD_HASH, GRU, ["arith", "xml"]) == pytest.approx(0.94)


@pytest.mark.parametrize(
    ("arith", "xml", "stages", "outcome"),
    [
        (0.45, 0.5, ["arith"], BELOW_THRESHOLD),  # ratio 0.9 does not exceed 90%
        (0.46, 0.44, ["arith", "xml"], BELOW_THRESHOLD),
        (0.46, 0.451, ["arith", "xml"], ADDED),
    ],
)
def test_the_task_thresholds_in_order(arith, xml, stages, outcome):
    search = started(config())
    requests = drive(search, 1, scorer(arith=arith, xml=xml))
    assert [request.stage for request in evaluations(requests)] == ["memorize", *stages]
    assert [len(job.settings) for request in evaluations(requests)[1:] for job in request.jobs] == [
        4
    ] * len(stages)
    assert completion(requests).record.outcome == outcome
    assert (CHILD_HASH in top_hashes(completion(requests).top_list)) == (outcome == ADDED)


@pytest.mark.parametrize(
    ("child", "outcome", "members"),
    [
        (0.495, ADDED, [GRU, CHILD_HASH]),  # fitness 0.99 beats LSTM's 0.98: LSTM is displaced
        (0.49, NOT_ADDED, [GRU, LSTM]),  # a tie does not displace
        (0.47, NOT_ADDED, [GRU, LSTM]),
    ],
)
def test_a_full_top_list_admits_only_a_better_child(child, outcome, members):
    search = started(config(top_size=2), lstm=0.49)
    requests = drive(search, 1, scorer(arith=child, xml=child, lstm=0.49))
    assert completion(requests).record.outcome == outcome
    assert top_hashes(search.top_list) == members


def test_the_top_list_is_ranked_by_fitness_and_kept_at_its_size():
    children = iter([CHILD, OTHER_CHILD])
    search = started(
        config(top_size=3), mutate=lambda graph, rng: always(next(children))(graph, rng)
    )
    score = scorer(arith=lambda s: 0.6, xml=lambda s: 0.55)
    drive(search, 1, score)
    assert top_hashes(search.top_list) == [CHILD_HASH, GRU, LSTM]
    assert [entry.fitness for entry in search.top_list] == pytest.approx([1.1, 1.0, 0.9])
    drive(search, 2, scorer(arith=0.7, xml=0.7))  # the other child: fitness 1.4, LSTM goes
    assert top_hashes(search.top_list) == [OTHER_HASH, CHILD_HASH, GRU]


def test_a_member_chosen_again_stays_and_is_not_filtered_again():
    search = started(config())
    drive(search, 1, scorer())
    assert CHILD_HASH in top_hashes(search.top_list)
    first_keys = set(stage_keys(drive(search, 2, scorer()), "arith"))
    requests = drive(search, 3, scorer())
    assert "memorize" not in [request.stage for request in evaluations(requests)]
    # the child is already a member: it can only stay
    assert completion(requests).record.outcome == KEPT
    assert not first_keys & set(stage_keys(requests, "arith"))


def test_a_discarded_child_that_passed_the_filter_gets_only_fresh_settings():
    search = started(config())
    first = drive(search, 1, scorer(arith=0.4))  # passes the filter, fails arith
    assert completion(first).record.outcome == BELOW_THRESHOLD
    again = drive(search, 2, scorer(arith=0.4))
    assert [request.stage for request in evaluations(again)] == ["arith"]
    assert not [request for request in again if isinstance(request, RecordArchitecture)]
    assert set(stage_keys(first, "arith")).isdisjoint(stage_keys(again, "arith"))
    assert len(set(stage_keys(again, "arith"))) == 4


def test_a_child_discarded_by_the_filter_is_filtered_again_on_a_fresh_setting():
    search = started(config())
    first = stage_keys(drive(search, 1, scorer(memorize=0.5)), "memorize")
    second = stage_keys(drive(search, 2, scorer(memorize=0.5)), "memorize")
    assert len(first) == len(second) == 1 and first != second


def test_the_never_repeat_rule_holds_until_the_space_is_used_up():
    # 16 settings per task: after four children's worth of 4 settings the space is exhausted.
    search = started(config())
    tried = []
    for step in range(1, 8):
        tried += stage_keys(drive(search, step, scorer(arith=0.4)), "arith")
    assert len(tried) == len(set(tried)) == 16
    assert search.history.count(CHILD_HASH, "arith") == 16


def test_reevaluation_adds_fresh_settings_on_every_task():
    search = started(config(reevaluate_probability=1.0, initial_settings=4))
    before = {
        (h, t): search.history.tried_keys(h, t) for h in (LSTM, GRU) for t in ("arith", "xml")
    }
    requests = drive(search, 1, scorer())
    (stage,) = evaluations(requests)
    member = completion(requests).record.architecture_hash
    assert stage.stage == "reevaluate" and completion(requests).record.outcome == REEVALUATED
    assert {job.architecture_hash for job in stage.jobs} == {member}
    for task in ("arith", "xml"):
        keys = [s.key() for job in stage.jobs if job.task == task for s in job.settings]
        assert len(set(keys)) == 4 and not set(keys) & before[member, task]


def test_reevaluation_stops_adding_when_the_space_is_used_up():
    search = started(config(reevaluate_probability=1.0, initial_settings=4))
    for step in range(1, 12):
        drive(search, step, scorer())
    for architecture_hash in (LSTM, GRU):
        assert search.history.count(architecture_hash, "arith") == 16  # the whole grid, once each
    assert not evaluations(drive(search, 12, scorer()))


def test_the_fitness_of_members_follows_the_reference():
    def gru(settings):
        return 0.6 if (settings.learning_rate, settings.num_layers) == (0.5, 4) else 0.5

    search = Search(config(reevaluate_probability=1.0, initial_settings=4), always(CHILD))
    for step in range(12):
        drive(search, step, scorer(gru=gru))
    fitness = {entry.architecture_hash: entry.fitness for entry in search.top_list}
    assert fitness == pytest.approx({GRU: 1.0, LSTM: 0.45 / 0.6})


def test_a_failing_mutation_is_a_recorded_step():
    def broken(graph, rng):
        raise ValueError("no valid child")

    search = started(config(), mutate=broken)
    requests = drive(search, 1, scorer())
    record = completion(requests).record
    assert record.outcome == MUTATION_FAILED and "no valid child" in record.description
    assert not evaluations(requests)
