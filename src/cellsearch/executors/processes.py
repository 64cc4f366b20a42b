"""`ProcessExecutor`: jobs run in local worker processes (`--executor processes`).

Workers are started with the 'spawn' method (fork would copy the driver's state, and is unsafe
with CUDA and threads), import cellsearch and the evaluator, run `run_job` and send back plain
dicts; they never see the storage. Workers ignore SIGINT, so Ctrl-C reaches only the driver,
which then stops them; an interrupted evaluation is therefore never mistaken for a failed one.
A worker whose driver died (SIGKILL leaves it no chance to stop them) exits within a second.

Each worker is a pool of one process (a `ProcessPoolExecutor` with `max_workers=1`), fed one job
at a time from a queue kept here. That is what makes a dying worker harmless to other jobs: a
shared pool, when one of its processes dies, fails every job it holds, queued ones included, and
kills its other workers. Here a worker that dies (killed for memory, a crash in native code)
affects only the job it was running, which is known exactly; that job goes back to the front of
the queue and runs again in a fresh worker. Only a job whose workers die more than
`allowed_failures` times comes back as failed Results with the reason, as the Dask executor does
with Dask's setting of the same name (see `executors.dask`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent import futures as concurrent_futures
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterator, Sequence

from cellsearch.errors import UserError
from cellsearch.evaluation.job import EvaluationJob, describe, failed_results
from cellsearch.executors.base import Executor, checked_or_failed, run_job_as_dicts

DRIVER_CHECK_SECONDS = 0.5  # how often a worker checks that its driver still lives

# Dask's default for distributed.scheduler.allowed-failures: a job may kill its worker this many
# times and still be run again.
DEFAULT_ALLOWED_FAILURES = 3


def _start_worker(driver_pid: int, threads: int) -> None:
    """A worker's initializer: ignore Ctrl-C (the driver stops its workers); use `threads` CPU
    threads, its share of the cores (torch would take them all in every worker, and workers
    fighting over cores run slower together than one alone); import the trainer now, while the
    driver is still starting; and exit when the driver is gone. A driver killed by SIGKILL cannot
    stop its workers, and a worker in the middle of a training run would otherwise go on for
    minutes, holding a GPU."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    import cellsearch.train.evaluate  # noqa: F401 - the default evaluator, imported once

    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(DRIVER_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="cellsearch-driver-watch", daemon=True).start()


@dataclass
class _Pending:
    """A submitted job: its future, and how many workers died running it."""

    job: EvaluationJob
    outer: Future
    deaths: int = 0


class _Worker:
    """One worker process (as a pool of one), and the job it is running."""

    def __init__(self) -> None:
        self.pool: concurrent_futures.ProcessPoolExecutor | None = None
        self.pending: _Pending | None = None


class ProcessExecutor(Executor):
    """Runs jobs in `workers` spawned processes, each evaluating on `device`; a job whose worker
    died is run again, up to `allowed_failures` times (see the module docstring)."""

    def __init__(
        self,
        workers: int = 2,
        device: str = "cpu",
        data_dir: str | None = None,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
    ):
        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        if allowed_failures < 0:
            raise ValueError(f"allowed_failures must be >= 0, got {allowed_failures}")
        self.workers, self.device, self.data_dir = workers, device, data_dir
        self.allowed_failures = allowed_failures
        # Guards everything below. Never held while a future is completed or given a callback:
        # callbacks run `_done`, which takes it.
        self._lock = threading.Lock()
        self._queue: deque[_Pending] = deque()
        self._workers = [_Worker() for _ in range(workers)]
        self._threads = max(1, (os.cpu_count() or 1) // workers)
        self._unfinished: set[Future] = set()
        self._closing = False

    def start(self) -> None:
        """Start every worker process now: they import torch and the trainer (seconds each)
        while the driver prepares the search, instead of when the first jobs wait for them."""
        with self._lock:
            self._closing = False
            for worker in self._workers:
                if worker.pool is None:
                    worker.pool = self._new_pool()
                    worker.pool.submit(os.getpid)  # a pool starts its process on first use

    def submit(self, job: EvaluationJob) -> Future:
        outer: Future = Future()
        outer.set_running_or_notify_cancel()
        with self._lock:
            self._closing = False
            self._unfinished.add(outer)
            self._queue.append(_Pending(job, outer))
            starts = self._assign()
        self._start(starts)
        return outer

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        return concurrent_futures.as_completed(futures)

    def shutdown(self, cancel: bool = False) -> None:
        if not cancel:
            with self._lock:
                unfinished = list(self._unfinished)
            concurrent_futures.wait(unfinished)
        with self._lock:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            pools = [worker.pool for worker in self._workers if worker.pool is not None]
            for worker in self._workers:
                worker.pool = None
        for pending in queued:
            self._settle(pending, failed_results(pending.job, "cancelled", self.device))
        for pool in pools:
            # Cancelling: a pool lets a running job finish, and a search being stopped should not
            # wait minutes for a training run whose result it will not record (the job's future
            # then completes as cancelled, see `_done`). Not cancelling: every job has finished,
            # so the workers are idle, and ending them now spares a second of interpreter
            # teardown each (torch's) at the end of every search.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=cancel)

    # -- internals -------------------------------------------------------------------------------

    def _assign(self) -> list[tuple[_Worker, _Pending]]:
        """Give queued jobs to idle workers (the lock held); what to start, outside the lock."""
        starts = []
        for worker in self._workers:
            if not self._queue:
                break
            if worker.pending is None:
                worker.pending = self._queue.popleft()
                starts.append((worker, worker.pending))
        return starts

    def _start(self, starts: list[tuple[_Worker, _Pending]]) -> None:
        for worker, pending in starts:
            try:
                with self._lock:
                    # Under the lock, so that `shutdown` never misses a pool started here.
                    inner = None if self._closing else self._submit_to(worker, pending.job)
                    if inner is None:
                        worker.pending = None
            except Exception as error:  # noqa: BLE001 - e.g. no process could be started
                # Not the job's fault: the driver stops instead of recording a failed evaluation.
                with self._lock:
                    worker.pending = None
                self._settle(pending, error)
                continue
            if inner is None:
                self._settle(pending, failed_results(pending.job, "cancelled", self.device))
                continue
            # Outside the lock: a job already finished calls `_done` right here.
            inner.add_done_callback(
                lambda done, worker=worker, pending=pending: self._done(worker, pending, done)
            )

    def _submit_to(self, worker: _Worker, job: EvaluationJob) -> Future:
        """Submit `job` to `worker`'s process, starting one when it has none (the lock held)."""
        for _ in range(2):
            if worker.pool is None:
                worker.pool = self._new_pool()
            try:
                return worker.pool.submit(run_job_as_dicts, job, self.device, self.data_dir)
            except BrokenProcessPool:  # its process died while idle: start a fresh one
                worker.pool = None
        raise BrokenProcessPool("could not start a worker process")

    def _new_pool(self) -> concurrent_futures.ProcessPoolExecutor:
        return concurrent_futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(), self._threads),
        )

    def _done(self, worker: _Worker, pending: _Pending, inner: Future) -> None:
        """Runs in the worker pool's thread once `inner` is finished, failed or cancelled."""
        died = not inner.cancelled() and isinstance(inner.exception(), BrokenProcessPool)
        outcome: list | None = None
        with self._lock:
            worker.pending = None
            if died:
                worker.pool = None  # broken for good; the next job gets a fresh process
                pending.deaths += 1
            if self._closing or inner.cancelled():
                outcome = failed_results(pending.job, "cancelled", self.device)
            elif died and pending.deaths <= self.allowed_failures:
                self._queue.appendleft(pending)  # first in line: it has waited longest
            elif died:
                outcome = failed_results(
                    pending.job,
                    f"worker process died: this job was running in {pending.deaths} worker"
                    " process(es) that died (killed for memory, or a crash in native code)",
                    self.device,
                )
            starts = [] if self._closing else self._assign()
        if outcome is None and not died:
            outcome = self._results(pending.job, inner)
        if outcome is not None:
            self._settle(pending, outcome)
        self._start(starts)

    def _settle(self, pending: _Pending, outcome: list | BaseException) -> None:
        with self._lock:
            self._unfinished.discard(pending.outer)
        if pending.outer.done():
            return
        if isinstance(outcome, BaseException):
            pending.outer.set_exception(outcome)
        else:
            pending.outer.set_result(outcome)

    def _results(self, job: EvaluationJob, done: Future) -> list:
        error = done.exception()
        if error is not None:
            return failed_results(job, describe(error), self.device)
        return checked_or_failed(job, done.result(), self.device)
