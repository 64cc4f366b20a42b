"""`ResidentEngine`: jobs handed in from several threads train together in the engine's own
thread and come back with the Results of training each alone; an engine that breaks fails the
jobs it held and serves the next ones; a cancelled job stops at once while the others train on.
Through Dask (`jobs_per_worker`), a worker trains its jobs together, a search records what an
in-process search records, and a stopped driver stops its jobs on the workers."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

distributed = pytest.importorskip("distributed")

from cellsearch.executors import InProcessExecutor, InterleavedExecutor, run_job
from cellsearch.executors.resident import ResidentEngine
from tests.executors.test_dask import FAKE, restore_environment, search  # noqa: F401
from tests.executors.test_interleaved import TINY, close, job, same

QUIET = logging.CRITICAL


def jobs():
    return [job("gru", "arith"), job("lstm", "memorize", layers=(1,), seeds=(0, 1)),
            job("mut1", "xml", layers=(2, 1))]


def handed_in_together(engine: ResidentEngine, items) -> list:
    """Each job handed to `engine` from a thread of its own, all at once; their Results."""
    start = threading.Barrier(len(items))

    def run(item):
        start.wait()
        return engine.run(item)

    with ThreadPoolExecutor(len(items)) as threads:
        return list(threads.map(run, items))


def test_jobs_from_several_threads_train_together_to_the_results_of_training_them_alone():
    engine = ResidentEngine(mixed=False)
    items = jobs()
    for item, results in zip(items, handed_in_together(engine, items), strict=True):
        assert all(r.ok for r in results)
        assert same(results, run_job(item))
    assert engine.jobs == 3 and engine.most_at_once > 1
    assert engine.summary().startswith("3 jobs, up to ")
    # idle now; a later job is served as well
    assert same(engine.run(items[0]), run_job(items[0]))


@pytest.mark.slow
def test_mixed_the_jobs_train_in_shared_steps():
    engine = ResidentEngine(mixed=True)
    items = jobs()
    for item, results in zip(items, handed_in_together(engine, items), strict=True):
        assert close(results, run_job(item))
    assert "mixed engine:" in engine.summary()
    assert ResidentEngine(device="cpu").mixed is False  # on a CPU each cell takes its own steps


def test_an_engine_that_breaks_fails_what_it_held_and_serves_the_next_jobs(monkeypatch):
    real = InterleavedExecutor.advance
    broken = [True]

    def advance(self):
        if broken.pop() if broken else False:
            raise RuntimeError("the engine broke")
        real(self)

    monkeypatch.setattr(InterleavedExecutor, "advance", advance)
    engine = ResidentEngine(mixed=False)
    item = jobs()[0]
    failed = engine.run(item)
    assert all(r.status == "failed" and "the engine broke" in r.reason for r in failed)
    assert same(engine.run(item), run_job(item))


# -- on Dask workers ----------------------------------------------------------------------------


@pytest.mark.slow
def test_dask_workers_train_their_jobs_together():
    from cellsearch.executors.dask import DaskExecutor

    items = jobs()
    with DaskExecutor(workers=1, device="cpu", jobs_per_worker=4, silence_logs=QUIET) as executor:
        futures = [executor.submit(item) for item in items]
        for item, future in zip(items, futures, strict=True):
            assert same(future.result(timeout=120), run_job(item))
        summary = executor.summary()
    assert summary.startswith("jobs trained together on each worker:\n  tcp://127.0.0.1:")
    assert "3 jobs, up to 3 at once" in summary


@pytest.mark.slow
def test_a_search_with_jobs_per_worker_records_what_an_in_process_search_records():
    from cellsearch.executors.dask import DaskExecutor

    assignments = [*FAKE, "max_steps=6"]
    with DaskExecutor(workers=2, device="cpu", jobs_per_worker=8, silence_logs=QUIET) as executor:
        assert search(executor, assignments) == search(InProcessExecutor(), assignments)


def test_a_cancelled_job_stops_at_once_and_the_others_train_on():
    engine = ResidentEngine(mixed=False)
    long = dataclasses.replace(job("gru", "arith"), options={**TINY, "epoch_windows": 400})
    other = job("tanh", "arith", layers=(1,))
    with ThreadPoolExecutor(2) as threads:
        stopped = threads.submit(engine.run, long, "stop me")
        kept = threads.submit(engine.run, other, "keep me")
        time.sleep(0.5)  # both training
        engine.cancel(["stop me", "not handed in"])
        assert all(r.status == "failed" and r.reason == "cancelled"
                   for r in stopped.result(timeout=10))
        assert same(kept.result(timeout=60), run_job(other))


@pytest.mark.slow
def test_a_stopped_driver_stops_its_jobs_on_the_workers_at_once():
    from cellsearch.executors import resident
    from cellsearch.executors.dask import DaskExecutor

    def engines_busy() -> bool:
        return any(each._executor.training for each in resident._ENGINES.values())

    with distributed.LocalCluster(n_workers=1, threads_per_worker=4, dashboard_address=":0",
                                  silence_logs=QUIET) as cluster, \
            distributed.Client(cluster) as client:
        executor = DaskExecutor(cluster.scheduler_address, device="cpu", jobs_per_worker=4,
                                silence_logs=QUIET)
        # one epoch of 400 windows: a minute of training, unless stopped
        long = dataclasses.replace(job("gru", "arith"), options={**TINY, "epoch_windows": 400})
        futures = [executor.submit(long) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not any(client.run(engines_busy).values()):
            assert time.monotonic() < deadline, "the jobs never started"
            time.sleep(0.2)
        executor.shutdown(cancel=True)
        assert all(r.reason == "cancelled" for future in futures for r in future.result())
        deadline = time.monotonic() + 10
        while any(client.run(engines_busy).values()):
            assert time.monotonic() < deadline, "the worker still trains the stopped jobs"
            time.sleep(0.2)
