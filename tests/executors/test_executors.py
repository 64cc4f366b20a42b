"""The behaviour every executor must share, run against each (in process, worker processes),
with the picklable fake trainer of tests/search/fake.py."""

from __future__ import annotations

import time

import pytest

from cellsearch.cells import zoo
from cellsearch.errors import UserError
from cellsearch.evaluation.result import FAILED
from cellsearch.evaluation.settings import SearchSpace
from cellsearch.executors import (
    EvaluationJob,
    InProcessExecutor,
    ProcessExecutor,
    make_executor,
    run_job,
)
from tests.search import fake

EXECUTOR_KINDS = ("inprocess", "processes")
SPACE = SearchSpace.for_search("arith", {"num_parameters": (5000,)})


def job(
    task: str = "arith", count: int = 3, evaluator: str = "tests.search.fake:evaluate", **options
) -> EvaluationJob:
    graph = zoo.get("gru")
    settings = tuple(SPACE.grid())[:count]
    return EvaluationJob(
        graph.canonical_hash(), graph.to_json(), task, settings, options, evaluator
    )


@pytest.fixture(scope="module")
def process_executor():
    executor = ProcessExecutor(workers=2)
    yield executor
    executor.shutdown()


@pytest.fixture(params=EXECUTOR_KINDS)
def executor(request, process_executor):
    return InProcessExecutor() if request.param == "inprocess" else process_executor


def expected(item: EvaluationJob):
    return [
        fake.result_for(item.architecture_hash, item.task, settings) for settings in item.settings
    ]


def test_results_come_back_per_setting_in_order(executor):
    jobs = [job("arith", 3), job("xml", 2), job("memorize", 1)]
    futures = {executor.submit(item): item for item in jobs}
    seen = []
    for future in executor.as_completed(list(futures)):
        seen.append(futures[future])
        assert future.result() == expected(futures[future])
    assert sorted(seen, key=jobs.index) == jobs


def test_options_reach_the_evaluator(executor, tmp_path):
    # flaky_evaluate requires the keyword `marker` (and, the file existing, answers at once): an
    # option that did not arrive would be a TypeError, hence a failed result.
    marker = tmp_path / "seen"
    marker.touch()
    future = executor.submit(job(count=1, evaluator="tests.search.fake:flaky_evaluate",
                                 marker=str(marker)))
    assert future.result()[0].ok


@pytest.mark.parametrize(
    ("evaluator", "reason"),
    [
        ("tests.search.fake:raising_evaluate", "RuntimeError: the fake trainer broke"),
        ("tests.search.fake:short_evaluate", "returned 2 results for 3 settings"),
        ("tests.search.no_such_module:evaluate", "cannot import"),
    ],
)
def test_a_failing_evaluation_is_a_failed_result(executor, evaluator, reason):
    item = job(evaluator=evaluator)
    results = executor.submit(item).result()
    assert [result.settings for result in results] == list(item.settings)
    assert all(result.status == FAILED and reason in result.reason for result in results)


def test_a_dead_worker_is_a_failed_result_and_the_pool_recovers():
    with ProcessExecutor(workers=1, allowed_failures=0) as executor:
        results = executor.submit(job(evaluator="tests.search.fake:dying_evaluate")).result()
        assert all(
            result.status == FAILED and "worker process died" in result.reason for result in results
        )
        assert executor.submit(job()).result() == expected(job())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dying_job_fails_alone_after_its_retries(workers):
    # Jobs running beside it or queued behind it (never started) come back with their results:
    # the search would otherwise commit them as failed and never evaluate those settings again.
    dying = job(evaluator="tests.search.fake:dying_evaluate")
    others = [job("arith", 3), job("xml", 2), job("memorize", 1), job("xml", 1)]
    with ProcessExecutor(workers=workers, allowed_failures=1) as executor:
        futures = [executor.submit(others[0]), executor.submit(dying)]
        futures += [executor.submit(item) for item in others[1:]]
        finished = list(executor.as_completed(futures))
        assert sorted(map(id, finished)) == sorted(map(id, futures))
        for future, item in zip([futures[0], *futures[2:]], others, strict=True):
            assert future.result() == expected(item)
        results = futures[1].result()
        assert [result.settings for result in results] == list(dying.settings)
        assert all(result.status == FAILED for result in results)
        assert "worker process died" in results[0].reason
        assert "running in 2 worker process(es) that died" in results[0].reason


def test_a_job_whose_worker_died_once_is_run_again(tmp_path):
    flaky = job(evaluator="tests.search.fake:flaky_evaluate", marker=str(tmp_path / "died"))
    with ProcessExecutor(workers=1) as executor:
        assert executor.submit(flaky).result(timeout=120) == expected(flaky)
    assert (tmp_path / "died").exists()  # its first worker did die


def test_cancelling_stops_running_and_queued_jobs_at_once():
    executor = ProcessExecutor(workers=2)
    futures = [executor.submit(job(count=1, sleep=30)) for _ in range(4)]  # 2 run, 2 wait
    time.sleep(0.5)
    started = time.monotonic()
    executor.shutdown(cancel=True)
    assert time.monotonic() - started < 10
    assert all(future.done() for future in futures)
    assert all(future.result()[0].reason == "cancelled" for future in futures)


def test_in_process_jobs_run_when_reached():
    executor = InProcessExecutor()
    futures = [executor.submit(job(count=1)), executor.submit(job(count=2))]
    assert not any(future.done() for future in futures)
    iterator = executor.as_completed(futures)
    first = next(iterator)
    assert first.done() and not futures[1].done()
    assert len(list(iterator)) == 1 and futures[1].done()


def test_run_job_never_raises_for_a_bad_graph():
    item = EvaluationJob("x", '{"nodes": 5}', "arith", tuple(SPACE.grid())[:1])
    (result,) = run_job(item)
    assert result.status == FAILED and "not a cell graph" in result.reason


def test_make_executor():
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    with pytest.raises(UserError, match="unknown executor"):
        make_executor("dask-ish")
    with pytest.raises(UserError, match="--workers"):
        make_executor("processes", workers=0)
