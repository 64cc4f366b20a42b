"""`DaskExecutor` on real local Dask clusters (worker processes, a scheduler in this process): the
behaviour every executor shares, searches that record exactly what an in-process search records,
a worker killed mid-job, a driver that stops and reattaches, a lost scheduler, GPU pinning."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections import Counter

import pytest
import torch

distributed = pytest.importorskip("distributed")

import dask

import cellsearch
from cellsearch.errors import UserError
from cellsearch.evaluation.result import FAILED
from cellsearch.executors import InProcessExecutor
from cellsearch.executors.dask import DaskExecutor, SchedulerLostError
from cellsearch.search import JobCompleted, open_run, run_search
from cellsearch.storage import SQLiteStorage

# The shared executor conformance tests, run here against a Dask cluster through the `executor`
# fixture below (optuna's one-suite-many-backends pattern).
from tests.executors.test_executors import (
    expected,
    job,
    test_a_failing_evaluation_is_a_failed_result,  # noqa: F401
    test_options_reach_the_evaluator,  # noqa: F401
    test_results_come_back_per_setting_in_order,  # noqa: F401
)

QUIET = logging.CRITICAL  # the killed workers in these tests are meant to die
FAKE = ["evaluator=tests.search.fake:evaluate", "mutator=tests.search.fake:mutate", "evaluation_options={}"]


@pytest.fixture(scope="module", autouse=True)
def restore_environment():
    # A Nanny sets OMP_NUM_THREADS=1 and friends in the process that starts it (Dask's
    # pre-spawn-environ), here pytest's: keep that from reaching later tests' subprocesses.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def executor():
    with DaskExecutor(workers=2, device="cpu", silence_logs=QUIET) as executor:
        yield executor


# -- helpers ------------------------------------------------------------------------------------


def search(executor, assignments, path=":memory:", on_event=None) -> dict:
    """Run (or resume) a tiny-preset search in the database at `path`; what it recorded."""
    with SQLiteStorage(path) as storage:
        run_id, config = open_run(storage, preset="tiny", assignments=assignments)
        run_search(storage, run_id, config, executor, on_event=on_event)
        return recorded(storage, run_id)


def recorded(storage, run_id) -> dict:
    """Everything a run stored, in an order that does not depend on completion order."""
    evaluations = [
        (record.architecture_hash, record.step, record.task, record.settings_key, record.result)
        for record in storage.get_evaluations(run_id)
    ]
    triples = [item[:4] for item in evaluations]
    assert len(triples) == len(set(triples)), "an evaluation was recorded twice"
    return {
        "evaluations": sorted(evaluations, key=lambda item: item[:4]),
        "architectures": [(item.hash, item.created_step, item.filter_outcome) for item in storage.get_architectures(run_id)],
        "steps": [dataclasses.replace(item, completed_at="") for item in storage.get_steps(run_id)],
        "top_list": storage.get_top_list(run_id),
    }


def without_timing(stored: dict) -> dict:
    """`stored` with wall-clock times zeroed."""
    evaluations = [(*item[:4], dataclasses.replace(item[4], wall_seconds=0.0)) for item in stored["evaluations"]]
    return {**stored, "evaluations": evaluations}


class WorkerKiller:
    """SIGKILLs a worker in the middle of a job once the search has completed `after_jobs[i]` jobs
    (counted through the driver's events), as a preempted node or the OOM killer would."""

    def __init__(self, client, after_jobs: tuple[int, ...]):
        self.client, self.after_jobs = client, after_jobs
        self.completed = 0
        self.changed = threading.Condition()
        self.killed: list[tuple[int, list[str]]] = []  # (pid, keys it was running)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def count(self, event) -> None:
        if isinstance(event, JobCompleted):
            with self.changed:
                self.completed += 1
                self.changed.notify_all()

    def _run(self) -> None:
        for threshold in self.after_jobs:
            with self.changed:
                if not self.changed.wait_for(lambda threshold=threshold: self.completed >= threshold, timeout=60):
                    return
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                running = self.client.run(
                    lambda dask_worker: (os.getpid(), [str(task.key) for task in dask_worker.state.executing]),
                    on_error="ignore",
                )
                busy = [(pid, keys) for pid, keys in running.values() if keys]
                if busy:
                    os.kill(busy[0][0], signal.SIGKILL)
                    self.killed.append(busy[0])
                    break
                time.sleep(0.01)


# -- the executor -------------------------------------------------------------------------------


def test_a_job_whose_workers_keep_dying_is_a_failed_result_and_the_cluster_recovers():
    with DaskExecutor(workers=1, device="cpu", allowed_failures=1, silence_logs=QUIET) as executor:
        item = job(evaluator="tests.search.fake:dying_evaluate")
        results = executor.submit(item).result(timeout=60)
        assert [result.settings for result in results] == list(item.settings)
        assert all(result.status == FAILED and "running on 2 Dask worker(s) that died" in result.reason for result in results)
        assert executor.submit(job()).result(timeout=60) == expected(job())


def test_local_workers_are_pinned_one_gpu_each(monkeypatch):
    # No GPU is needed to check the pinning: each worker's environment is what matters.
    monkeypatch.setattr("cellsearch.executors.dask.visible_gpus", lambda: ["3", "5"])
    with DaskExecutor(device="auto", silence_logs=QUIET) as executor:
        pinned = executor.client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert sorted(pinned.values()) == ["3", "5"]  # one worker per GPU by default
    with DaskExecutor(workers=3, device="cuda", silence_logs=QUIET) as executor:
        pinned = executor.client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    assert Counter(pinned.values()) == {"3": 2, "5": 1}  # round-robin beyond one per GPU
    with pytest.raises(UserError, match="pins one GPU to each worker"):
        DaskExecutor(device="cuda:1").submit(job())
    monkeypatch.setattr("cellsearch.executors.dask.visible_gpus", list)
    with pytest.raises(UserError, match="no CUDA GPU for local workers"):
        DaskExecutor(device="cuda").submit(job())


def test_local_workers_leave_ctrl_c_to_the_driver(executor):
    # A terminal's Ctrl-C reaches every process of its group: workers would each print a
    # traceback, while the driver closes the cluster anyway.
    ignored = executor.client.run(lambda: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    assert list(ignored.values()) == [True, True]


def test_bad_arguments_and_an_unreachable_scheduler_are_user_errors():
    with pytest.raises(UserError, match="--workers must be at least 1"):
        DaskExecutor(workers=0)
    with pytest.raises(UserError, match="with --scheduler, start workers on the cluster"):
        DaskExecutor("tcp://127.0.0.1:8786", workers=2)
    unreachable = pytest.raises(UserError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), unreachable:
        DaskExecutor("tcp://127.0.0.1:9").submit(job())
    # `start` connects, so that the CLI learns of it before it writes the database.
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(UserError, match="cannot reach"):
        DaskExecutor("tcp://127.0.0.1:9").start()


def test_start_connects_and_submit_uses_that_connection():
    with DaskExecutor(workers=1, device="cpu", silence_logs=QUIET) as executor:
        executor.start()
        client = executor.client
        assert client.status == "running" and len(client.scheduler_info()["workers"]) == 1
        assert executor.submit(job()).result(timeout=60) == expected(job())
        assert executor.client is client


def test_workers_with_another_cellsearch_are_refused(monkeypatch):
    monkeypatch.setattr(cellsearch, "__version__", "0.0.0-not-the-workers")
    with pytest.raises(UserError, match=r"must run cellsearch 0\.0\.0-not-the-workers.*cellsearch \d"):
        DaskExecutor(workers=1, device="cpu", silence_logs=QUIET).submit(job())


# -- searches -----------------------------------------------------------------------------------


def test_a_search_on_dask_records_what_an_in_process_search_records(executor):
    assignments = [*FAKE, "max_steps=8"]
    in_process = search(InProcessExecutor(), assignments)
    on_dask = search(executor, assignments)
    assert len(in_process["evaluations"]) > 30 and len(in_process["steps"]) == 9
    assert on_dask == in_process


@pytest.mark.slow
def test_a_real_search_on_dask_records_what_an_in_process_search_records(executor):
    # The real trainer, tiny: the filter, arith and xml with 3000-parameter models, one short epoch.
    # Dask's workers run torch on one thread; so does the in-process reference, so that both
    # compute the same sums in the same order (and two busy cores are not oversubscribed).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assignments = ["max_steps=2", "initial_settings=2", "evaluation_options.max_epochs=1", "evaluation_options.epoch_windows=2"]
        in_process = search(InProcessExecutor(device="cpu"), assignments)
    finally:
        torch.set_num_threads(threads)
    on_dask = search(executor, assignments)
    assert sum(item[4].ok for item in in_process["evaluations"]) >= 8
    assert without_timing(on_dask) == without_timing(in_process)


@pytest.mark.slow
def test_a_worker_killed_mid_job_loses_and_repeats_nothing(tmp_path):
    undisturbed = search(InProcessExecutor(), [*FAKE, "max_steps=8"])
    # `sleep` (an option of the fake trainer) makes each job last 0.15 s per setting.
    assignments = [*FAKE, "max_steps=8", "evaluation_options.sleep=0.15"]
    with DaskExecutor(workers=2, device="cpu", silence_logs=QUIET) as executor:
        killer = WorkerKiller(executor.client, after_jobs=(1, 10))
        disturbed = search(executor, assignments, tmp_path / "search.db", on_event=killer.count)
        killer.thread.join(timeout=30)
        survivors = executor.client.run(os.getpid)
    assert len(killer.killed) == 2, "the test did not manage to kill a worker mid-job"
    assert not {pid for pid, _ in killer.killed} & set(survivors.values())
    assert disturbed == undisturbed  # every evaluation once, none failed, same search


@pytest.mark.slow
def test_a_stopped_driver_reattaches_to_the_cluster_and_resumes(tmp_path):
    class Stop(Exception):
        pass

    completed = []

    def stop_after_the_first_job(event):
        if isinstance(event, JobCompleted):
            completed.extend(event.results)
            raise Stop  # the other jobs of step 0 are still running on the cluster

    uninterrupted = search(InProcessExecutor(), [*FAKE, "max_steps=6"])
    assignments = [*FAKE, "max_steps=6", "evaluation_options.sleep=0.05"]
    path = tmp_path / "search.db"
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=QUIET
    ) as cluster:
        with pytest.raises(Stop), DaskExecutor(cluster.scheduler_address, device="cpu", silence_logs=QUIET) as executor:
            search(executor, assignments, path, on_event=stop_after_the_first_job)
        with SQLiteStorage(path) as storage:
            assert storage.count_evaluations(storage.latest_run().run_id) == len(completed) > 0
        with DaskExecutor(cluster.scheduler_address, device="cpu", silence_logs=QUIET) as executor:
            resumed = search(executor, assignments, path)
    assert resumed == uninterrupted


@pytest.mark.slow
def test_losing_the_scheduler_stops_the_search_with_a_clear_error(tmp_path):
    path = tmp_path / "search.db"
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=QUIET)

    completed = []

    def lose_the_scheduler(event):
        if isinstance(event, JobCompleted):
            completed.extend(event.results)
            if cluster.status.name == "running":
                cluster.close()

    lost = pytest.raises(SchedulerLostError, match="lost the connection to the Dask scheduler at tcp://")
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), lost:
        with DaskExecutor(cluster.scheduler_address, device="cpu", silence_logs=QUIET) as executor:
            search(executor, [*FAKE, "max_steps=2", "evaluation_options.sleep=0.2"], path, on_event=lose_the_scheduler)
    with SQLiteStorage(path) as storage:
        stored = storage.get_evaluations(storage.latest_run().run_id)
    # What completed is stored, and nothing the lost scheduler cancelled is recorded as failed.
    assert sorted(record.result.settings.key() for record in stored) == sorted(result.settings.key() for result in completed)
    assert completed and not any(record.result.status == FAILED for record in stored)
