"""`InterleavedExecutor`: many jobs trained together, a window at a time each, give exactly the
Results of training them one by one; a short job comes back while a long one trains on, and
jobs submitted meanwhile join. A whole search through it stores what the in-process one does."""

from __future__ import annotations

import math
import os

import pytest
import torch

from cellsearch.cells import zoo
from cellsearch.evaluation.settings import Settings
from cellsearch.executors import (
    EvaluationJob,
    InProcessExecutor,
    InterleavedExecutor,
    run_job,
)
from cellsearch.search import open_run, run_search
from cellsearch.storage import InMemoryStorage
from tests.search.test_driver import contents

TINY = {"max_epochs": 2, "epoch_windows": 3, "valid_samples": 40, "test_samples": 40}


def job(cell: str, task: str, layers=(1, 2), epochs: int = 2, seeds=(0,)) -> EvaluationJob:
    graph = zoo.get(cell)
    settings = tuple(
        Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=n,
                 num_parameters=3000, seed=seed)
        for n in layers for seed in seeds
    )
    return EvaluationJob(graph.canonical_hash(), graph.to_json(), task, settings,
                         options={**TINY, "max_epochs": epochs})


def same(a, b) -> bool:
    def plain(result):
        data = result.to_dict()
        data.pop("wall_seconds")
        return repr(data)  # NaN-safe comparison

    return [plain(r) for r in a] == [plain(r) for r in b]


def test_jobs_trained_together_give_the_results_of_training_them_alone():
    jobs = [job("gru", "arith"), job("lstm", "memorize", layers=(1,), seeds=(0, 1)),
            job("mut1", "xml", layers=(2, 1))]
    executor = InterleavedExecutor()
    futures = [executor.submit(item) for item in jobs]
    finished = list(executor.as_completed(futures))
    assert sorted(map(id, finished)) == sorted(map(id, futures))
    for item, future in zip(jobs, futures):
        results = future.result()
        assert all(r.ok and math.isfinite(r.value) and len(r.history) == 2 for r in results)
        assert same(results, run_job(item))


def test_a_short_job_comes_back_first_and_a_late_job_joins():
    executor = InterleavedExecutor()
    long, short = executor.submit(job("gru", "arith", epochs=4)), executor.submit(
        job("tanh", "arith", layers=(1,), epochs=1))
    first = next(iter(executor.as_completed([long, short])))
    assert first is short and not long.done()
    late = executor.submit(job("mut2", "arith", layers=(1,), epochs=1))
    order = list(executor.as_completed([long, late]))
    assert order == [late, long]  # joined while the long one trained, and ended before it


def test_a_search_through_it_stores_what_the_in_process_search_stores():
    assignments = [
        "tasks=[\"arith\", \"xml\"]", "initial_settings=2", "settings_per_task=2",
        "filter_threshold=0.03", "top_size=4", "max_steps=4", "steps_in_flight=4",
        'space_overrides={"memorize": {"num_parameters": [3000], "num_layers": [1]},'
        ' "arith": {"num_parameters": [3000], "num_layers": [1]},'
        ' "xml": {"num_parameters": [3000], "num_layers": [1]}}',
        'evaluation_options={"max_epochs": 1, "epoch_windows": 3, "valid_samples": 40,'
        ' "test_samples": 40}',
    ]
    stored = []
    for executor in (InProcessExecutor(), InterleavedExecutor()):
        storage = InMemoryStorage()
        run_id, config = open_run(storage, assignments=assignments)
        run_search(storage, run_id, config, executor)
        stored.append(contents(storage))
    assert stored[0] == stored[1] and len(stored[0][0]) > 10


def test_a_shapes_populations_train_one_after_another_and_shapes_side_by_side(monkeypatch):
    """A shape cut into several populations (each sized to its share of the memory) trains them
    in turn, as `evaluate` does: all at once could exceed the memory they were sized for."""
    from cellsearch.train import evaluate as module
    from cellsearch.train.trainer import drive

    alive: dict[int, int] = {}
    most: dict[int, int] = {}

    def fake_run(graph, task, members, hidden, count, **options):
        layers = members[0].num_layers
        alive[layers] = alive.get(layers, 0) + 1
        most[layers] = max(most.get(layers, 0), alive[layers])
        yield
        yield
        alive[layers] -= 1
        if any(m.seed == 3 for m in members):
            raise RuntimeError("out of memory")
        return [f"trained {m.num_layers} {m.seed}" for m in members]

    monkeypatch.setattr(module, "population_run", fake_run)
    settings = list(job("gru", "memorize", layers=(1, 2), seeds=range(5)).settings)
    results = drive(module.evaluation(zoo.get("gru"), "memorize", settings, population_size=2,
                                      epoch_windows=3, valid_samples=40, test_samples=40))
    assert most == {1: 1, 2: 1}  # one population of each shape at a time
    # (K = 2: seeds 0-1, 2-3 and 4 per shape; the population with seed 3 broke)
    for setting, result in zip(settings, results):
        if setting.seed in (2, 3):
            assert result.status == "failed" and "out of memory" in result.reason
        else:
            assert result == f"trained {setting.num_layers} {setting.seed}"


def test_on_a_gpu_it_asks_cuda_for_its_most_hardware_queues_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    InterleavedExecutor(device="cpu")
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in os.environ
    InterleavedExecutor(device="cuda")
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "8")
    InterleavedExecutor(device="auto")
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"


def close(a, b) -> bool:
    """The same Results to float rounding: the mixed engine sums in another order."""
    def numbers(result):
        return [result.status, result.epochs, result.tokens, *result.valid.values(),
                *result.test.values()]

    return all(
        x == y if isinstance(x, (str, int)) else math.isclose(x, y, rel_tol=2e-3, abs_tol=1e-4)
        for ra, rb in zip(a, b, strict=True) for x, y in zip(numbers(ra), numbers(rb), strict=True))


def test_mixed_jobs_train_in_shared_steps_to_the_results_of_training_them_alone(monkeypatch):
    from cellsearch.train import steps as steps_module

    shared = []
    original = steps_module.MixedSteps._train

    def counted(self):
        shared.append(len(self.populations))
        original(self)

    monkeypatch.setattr(steps_module.MixedSteps, "_train", counted)
    jobs = [job("gru", "arith"), job("lstm", "memorize", layers=(1,), seeds=(0, 1)),
            job("mut1", "xml", layers=(2, 1))]
    executor = InterleavedExecutor(mixed=True)
    futures = [executor.submit(item) for item in jobs]
    assert len(list(executor.as_completed(futures))) == 3
    for item, future in zip(jobs, futures):
        results = future.result()
        assert all(r.ok and len(r.history) == 2 for r in results)
        assert close(results, run_job(item))
    # the populations of a task trained in the same steps: arith's and xml's two each
    assert max(shared) == 2 and not executor._mixer.memberships


def test_a_shared_step_that_fails_fails_each_population_in_it(monkeypatch):
    from cellsearch.train import steps as steps_module

    def broken(self):
        raise RuntimeError("CUDA out of memory in a shared step")

    monkeypatch.setattr(steps_module.MixedSteps, "_train", broken)
    executor = InterleavedExecutor(mixed=True)
    futures = [executor.submit(job("gru", "arith")), executor.submit(job("lstm", "memorize"))]
    for future in executor.as_completed(futures):
        assert all(r.status == "failed" and "out of memory in a shared step" in r.reason
                   for r in future.result())


def test_a_search_through_the_mixed_executor_stores_its_evaluations():
    assignments = [
        "tasks=[\"arith\"]", "initial_settings=2", "settings_per_task=2",
        "filter_threshold=0.0", "top_size=4", "max_steps=3", "steps_in_flight=3",
        'space_overrides={"memorize": {"num_parameters": [3000], "num_layers": [1]},'
        ' "arith": {"num_parameters": [3000], "num_layers": [1]}}',
        'evaluation_options={"max_epochs": 1, "epoch_windows": 3, "valid_samples": 40,'
        ' "test_samples": 40}',
    ]
    storage = InMemoryStorage()
    run_id, config = open_run(storage, assignments=assignments)
    run_search(storage, run_id, config, InterleavedExecutor(mixed=True))
    evaluations = contents(storage)[0]
    assert len(evaluations) > 6


def test_where_the_mixed_kernel_does_not_work_populations_take_their_own_steps(monkeypatch):
    from cellsearch.engine import mixed

    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "8")
    monkeypatch.setattr(mixed, "usable", lambda device: False)
    assert InterleavedExecutor(device="cuda", mixed=True)._mixer is None
    monkeypatch.setattr(mixed, "usable", lambda device: True)
    assert InterleavedExecutor(device="cuda", mixed=True)._mixer is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a machine without a GPU")
def test_the_mixed_kernel_is_not_usable_on_a_device_that_is_not_there_and_says_why():
    from cellsearch.engine import mixed

    mixed.usable.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="mixed engine's kernel is not usable on cuda"):
            assert not mixed.usable("cuda")
    finally:
        mixed.usable.cache_clear()


def test_on_a_gpu_the_mixed_summary_says_how_much_memory_was_held(monkeypatch):
    from cellsearch.engine import mixed
    from cellsearch.train.steps import Mixer

    monkeypatch.setattr(mixed, "usable", lambda device: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 23.25 * 2**30)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(Mixer, "summary", lambda self: "3 shared steps made")
    executor = InterleavedExecutor(device="cuda", mixed=True)
    assert executor.summary() == ("mixed engine: 3 shared steps made; GPU memory held at most "
                                  "23.2 of 80.0 GiB")
    assert InterleavedExecutor(device="cpu", mixed=True).summary() == (
        "mixed engine: 3 shared steps made")
