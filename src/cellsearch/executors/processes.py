"""`ProcessExecutor`: jobs run in a pool of local worker processes (`--executor processes`).

Workers are started with the 'spawn' method (fork would copy the driver's state, and is unsafe
with CUDA and threads), import cellsearch and the evaluator, run `run_job` and send back plain
dicts; they never see the storage. Workers ignore SIGINT, so Ctrl-C reaches only the driver,
which then stops them; an interrupted evaluation is therefore never mistaken for a failed one.

A worker that dies (killed for memory, a crash in native code) breaks a `ProcessPoolExecutor`:
the jobs it held become failed Results ("worker process died"), and the next `submit` starts a
fresh pool.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent import futures as concurrent_futures
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Sequence

from cellsearch.executors.base import (
    EvaluationJob,
    Executor,
    checked_results,
    failed_results,
    run_job,
)


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _work(job: EvaluationJob, device: str, data_dir: str | None) -> list[dict[str, Any]]:
    return [result.to_dict() for result in run_job(job, device, data_dir)]


class ProcessExecutor(Executor):
    """Runs jobs in `workers` spawned processes, each evaluating on `device`."""

    def __init__(self, workers: int = 2, device: str = "cpu", data_dir: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers, self.device, self.data_dir = workers, device, data_dir
        self._pool: concurrent_futures.ProcessPoolExecutor | None = None

    def submit(self, job: EvaluationJob) -> Future:
        outer: Future = Future()
        try:
            inner = self._live_pool().submit(_work, job, self.device, self.data_dir)
        except BrokenProcessPool:
            self._pool = None
            inner = self._live_pool().submit(_work, job, self.device, self.data_dir)
        outer.set_running_or_notify_cancel()
        inner.add_done_callback(lambda done: outer.set_result(self._results(job, done)))
        return outer

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        return concurrent_futures.as_completed(futures)

    def shutdown(self, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            # ProcessPoolExecutor lets running jobs finish even when cancelling; a search being
            # stopped should not wait minutes for a training run whose result it will not record.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=cancel)

    def _live_pool(self) -> concurrent_futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent_futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_interrupts,
            )
        return self._pool

    def _results(self, job: EvaluationJob, done: Future) -> list:
        if done.cancelled():
            return failed_results(job, "cancelled", self.device)
        error = done.exception()
        if error is not None:
            reason = (
                "worker process died"
                if isinstance(error, BrokenProcessPool)
                else type(error).__name__
            )
            return failed_results(job, f"{reason}: {error}", self.device)
        try:
            return checked_results(job, done.result())
        except Exception as error:  # noqa: BLE001 - a malformed answer is a failed evaluation
            return failed_results(job, f"{type(error).__name__}: {error}", self.device)
