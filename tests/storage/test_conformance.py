"""The behaviour every `Storage` backend must share, run against each of them (see conftest)."""

from __future__ import annotations

import math

import pytest

from cellsearch.evaluation.result import FAILED, Result
from cellsearch.evaluation.settings import Settings
from cellsearch.storage import (
    FILTER_EXEMPT,
    FILTER_FAILED,
    FILTER_PASSED,
    ArchitectureRecord,
    DuplicateEvaluationError,
    StepRecord,
    StorageError,
    TopEntry,
    memory,
    sqlite,
)

CONFIG = {
    "tasks": ["arith", "xml"],
    "seed": 3,
    "space_overrides": {"arith": {"num_parameters": [5000]}},
    "max_steps": None,
}


def settings(learning_rate: float = 0.5, seed: int = 0, num_layers: int = 1) -> Settings:
    return Settings(
        init_scale=1.0,
        learning_rate=learning_rate,
        max_grad_norm=5.0,
        num_layers=num_layers,
        num_parameters=5000,
        seed=seed,
    )


def result(task: str, settings_options: dict, **fields) -> Result:
    """A result for `task` of the one model size these tests use; `fields` say how it went."""
    return Result(
        task=task,
        settings=settings(**settings_options),
        hidden_size=12,
        num_parameters=4990,
        metric="accuracy",
        **fields,
    )


def ok(task: str = "arith", value: float = 0.5, **kwargs) -> Result:
    return result(
        task,
        kwargs,
        valid={"accuracy": value, "perplexity": 3.5},
        test={"accuracy": value - 0.01},
        epochs=7,
        wall_seconds=1.25,
        device="cpu",
    )


def failed(task: str = "arith", **kwargs) -> Result:
    return result(task, kwargs, status=FAILED, reason="RuntimeError: out of memory")


def architecture(name: str, **kwargs) -> ArchitectureRecord:
    return ArchitectureRecord(
        hash=name, graph_json='{"nodes": []}', equations=f"h' = {name}\n", **kwargs
    )


@pytest.fixture
def run(storage) -> int:
    run_id = storage.create_run(CONFIG)
    storage.add_architecture(run_id, architecture("a"))
    storage.add_architecture(run_id, architecture("b"))
    return run_id


# -- runs ---------------------------------------------------------------------------------------


def test_runs_round_trip_their_config(storage):
    assert storage.latest_run() is None and storage.get_runs() == []
    first = storage.create_run(CONFIG)
    second = storage.create_run({"seed": 4})
    assert (first, second) == (1, 2)
    assert [run.run_id for run in storage.get_runs()] == [1, 2]
    assert storage.get_run(first).config == CONFIG
    assert storage.latest_run().config == {"seed": 4}
    with pytest.raises(StorageError):
        storage.get_run(99)


def test_update_run_config_replaces_it(storage, monkeypatch):
    run_id = storage.create_run(CONFIG)
    before = storage.get_run(run_id).updated_at
    later = "2999-01-01T00:00:00+00:00"  # timestamps have whole seconds: make the update later
    monkeypatch.setattr(sqlite, "utc_now", lambda: later)
    monkeypatch.setattr(memory, "utc_now", lambda: later)
    storage.update_run_config(run_id, {**CONFIG, "max_steps": 10})
    record = storage.get_run(run_id)
    assert record.config["max_steps"] == 10
    assert record.updated_at == later != before
    with pytest.raises(StorageError):
        storage.update_run_config(99, CONFIG)


def test_a_stored_config_is_a_copy(storage):
    config = {"tasks": ["arith"]}
    run_id = storage.create_run(config)
    config["tasks"].append("xml")
    storage.get_run(run_id).config["tasks"].append("ptb")
    assert storage.get_run(run_id).config == {"tasks": ["arith"]}


# -- architectures ------------------------------------------------------------------------------


def test_architectures_are_added_once_and_keep_their_fields(storage):
    run_id = storage.create_run(CONFIG)
    child = architecture("c", parent_hash="a", mutation="swap tanh for relu", created_step=4)
    assert storage.add_architecture(run_id, architecture("a", filter_outcome=FILTER_EXEMPT))
    assert storage.add_architecture(run_id, child)
    assert not storage.add_architecture(run_id, architecture("c", mutation="something else"))
    assert storage.get_architectures(run_id) == [
        architecture("a", filter_outcome=FILTER_EXEMPT),
        child,
    ]


def test_architectures_belong_to_their_run(storage):
    first, second = storage.create_run(CONFIG), storage.create_run(CONFIG)
    storage.add_architecture(first, architecture("a"))
    assert storage.add_architecture(second, architecture("a"))
    assert [record.hash for record in storage.get_architectures(second)] == ["a"]
    with pytest.raises(StorageError):
        storage.add_architecture(99, architecture("a"))


def test_filter_outcome(storage, run):
    storage.set_filter_outcome(run, "a", FILTER_PASSED)
    storage.set_filter_outcome(run, "b", FILTER_FAILED)
    outcomes = {record.hash: record.filter_outcome for record in storage.get_architectures(run)}
    assert outcomes == {"a": FILTER_PASSED, "b": FILTER_FAILED}
    with pytest.raises(StorageError):
        storage.set_filter_outcome(run, "a", "maybe")
    with pytest.raises(StorageError):
        storage.set_filter_outcome(run, "unknown", FILTER_PASSED)
    with pytest.raises(StorageError):
        storage.add_architecture(run, architecture("d", filter_outcome="maybe"))


# -- evaluations --------------------------------------------------------------------------------


def test_evaluations_round_trip_results(storage, run):
    results = [ok(learning_rate=0.5, seed=7), ok("xml", 0.25), failed(learning_rate=1.0)]
    storage.add_evaluations(run, "a", 3, results)
    records = storage.get_evaluations(run)
    assert [record.result for record in records] == results
    assert [(record.architecture_hash, record.step) for record in records] == [("a", 3)] * 3
    assert records[0].settings_key == results[0].settings.key()
    assert records[0].value == 0.5
    assert (
        math.isnan(records[2].value) and records[2].result.reason == "RuntimeError: out of memory"
    )
    assert storage.count_evaluations(run) == 3


def keys(records):
    return [(r.architecture_hash, r.task, r.result.settings.learning_rate, r.step) for r in records]


def test_evaluation_filters_and_order(storage, run):
    storage.add_evaluations(run, "a", 0, [ok(learning_rate=0.1), ok("xml", learning_rate=0.1)])
    storage.add_evaluations(run, "b", 1, [ok(learning_rate=0.2)])
    storage.add_evaluations(run, "a", 2, [ok(learning_rate=0.3)])
    assert keys(storage.get_evaluations(run)) == [
        ("a", "arith", 0.1, 0),
        ("a", "xml", 0.1, 0),
        ("b", "arith", 0.2, 1),
        ("a", "arith", 0.3, 2),
    ]
    assert keys(storage.get_evaluations(run, architecture_hash="a", task="arith")) == [
        ("a", "arith", 0.1, 0),
        ("a", "arith", 0.3, 2),
    ]
    assert keys(storage.get_evaluations(run, step=1)) == [("b", "arith", 0.2, 1)]
    assert storage.get_evaluations(run, architecture_hash="zzz") == []


def test_never_repeat_a_triple_and_store_nothing_of_a_refused_job(storage, run):
    storage.add_evaluations(run, "a", 1, [ok(learning_rate=0.5, seed=1)])
    # Another seed is the same configuration (the seed is not part of the key, §3.1).
    with pytest.raises(DuplicateEvaluationError):
        storage.add_evaluations(run, "a", 2, [ok(learning_rate=0.1), ok(learning_rate=0.5, seed=2)])
    with pytest.raises(DuplicateEvaluationError):
        storage.add_evaluations(run, "a", 2, [ok(learning_rate=0.2), ok(learning_rate=0.2, seed=9)])
    assert storage.count_evaluations(run) == 1
    # The same settings on another task, another architecture or another run are new.
    storage.add_evaluations(run, "a", 2, [ok("xml", learning_rate=0.5)])
    storage.add_evaluations(run, "b", 2, [ok(learning_rate=0.5)])
    other = storage.create_run(CONFIG)
    storage.add_architecture(other, architecture("a"))
    storage.add_evaluations(other, "a", 0, [ok(learning_rate=0.5)])
    assert storage.count_evaluations(run) == 3 and storage.count_evaluations(other) == 1


def test_evaluations_need_a_stored_architecture(storage, run):
    with pytest.raises(StorageError):
        storage.add_evaluations(run, "unknown", 0, [ok()])
    assert storage.count_evaluations(run) == 0


# -- steps and the top list ---------------------------------------------------------------------


def test_steps_complete_in_order_with_their_top_lists(storage, run):
    assert storage.last_completed_step(run) is None
    assert storage.get_top_list(run) == []
    first = [TopEntry("b", 1.0), TopEntry("a", 0.9)]
    storage.complete_step(
        run, StepRecord(0, "initialize", None, "initialized", "LSTM and GRU"), first
    )
    with pytest.raises(StorageError):
        storage.complete_step(run, StepRecord(0, "initialize", None, "initialized"), first)
    with pytest.raises(StorageError):
        storage.complete_step(run, StepRecord(2, "mutate", "a", "added"), first)
    storage.complete_step(
        run, StepRecord(1, "reevaluate", "a", "reevaluated"), first
    )  # unchanged list
    second = [TopEntry("a", 1.5), TopEntry("b", math.nan)]
    storage.complete_step(run, StepRecord(2, "mutate", "a", "added", "new child"), second)
    storage.complete_step(run, StepRecord(3, "mutate", "b", "filtered-out"), second)

    assert storage.last_completed_step(run) == 3
    steps = storage.get_steps(run)
    assert [(s.step, s.kind, s.architecture_hash, s.outcome) for s in steps] == [
        (0, "initialize", None, "initialized"),
        (1, "reevaluate", "a", "reevaluated"),
        (2, "mutate", "a", "added"),
        (3, "mutate", "b", "filtered-out"),
    ]
    assert steps[0].description == "LSTM and GRU" and all(step.completed_at for step in steps)
    assert storage.get_top_list(run, 0) == first and storage.get_top_list(run, 1) == first
    top = storage.get_top_list(run)
    assert (
        top[0] == TopEntry("a", 1.5)
        and top[1].architecture_hash == "b"
        and math.isnan(top[1].fitness)
    )
    assert storage.get_top_list(run, 3) == top
    with pytest.raises(StorageError):
        storage.get_top_list(run, 4)


def test_runs_keep_separate_steps(storage, run):
    other = storage.create_run(CONFIG)
    storage.complete_step(run, StepRecord(0, "initialize", None, "initialized"), [])
    assert storage.last_completed_step(other) is None
    storage.complete_step(other, StepRecord(0, "initialize", None, "initialized"), [])
    assert storage.last_completed_step(run) == storage.last_completed_step(other) == 0
