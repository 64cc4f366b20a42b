"""A process's resident engine: jobs handed in from any number of threads train together, in one
thread of its own, through an `InterleavedExecutor` (in shared steps of the mixed engine on a
GPU). This is how a Dask worker trains many jobs at once (`DaskExecutor(jobs_per_worker=N)`):
Dask runs each job's task in one of the worker's N threads, the task hands its job to the engine
(`run_job_together`) and waits, and the engine advances every job it holds a window at a time,
so a worker's GPU trains N jobs' populations in the same launches instead of one job at a time.

One thread owns the engine, so all of its CUDA work (and CUDA-graph captures) comes from one
thread, as in the driver's own `--executor mixed`. The engine lives as long as its process; it
sleeps while it holds no job. A job's Results are the ones `run_job` gives, as every population
trains independently of the others. Unlike a job run whole, a job here can be stopped while it
trains (`cancel`, by the tag it was handed in with): a stopped search frees its workers at once.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Collection
from concurrent.futures import Future
from typing import Any

from cellsearch.evaluation.job import EvaluationJob, describe, failed_results
from cellsearch.evaluation.result import Result
from cellsearch.executors.interleaved import InterleavedExecutor, on_gpu


class ResidentEngine:
    """Trains the jobs given to `run` (from any thread) together, in a thread of its own.

    `mixed`: train in shared steps of the mixed engine; None, where the device is a GPU (on a
    CPU the mixed engine's instructions run as torch operations, slower than each cell's own).
    How many jobs train at once is bounded by the threads that hand them in (a Dask worker's
    `nthreads`) and, on a GPU, by its free memory (`InterleavedExecutor`'s admission).
    """

    def __init__(self, device: str = "cpu", data_dir: str | None = None, *,
                 mixed: bool | None = None):
        if mixed is None:
            mixed = on_gpu(device)
        self.device, self.data_dir, self.mixed = device, data_dir, mixed
        self.jobs = self.most_at_once = 0  # for `summary`
        # (job, the caller's future, its tag), or (None, None, tags to cancel)
        self._inbox: queue.SimpleQueue[tuple[Any, Any, Any]] = queue.SimpleQueue()
        self._executor = self._new_executor()
        threading.Thread(target=self._serve, name="cellsearch-engine", daemon=True).start()

    def run(self, job: EvaluationJob, tag: str | None = None) -> list[Result]:
        """Train `job` with whatever else the engine holds; its Results once it has finished,
        or been cancelled by its `tag` (blocks the calling thread meanwhile)."""
        future: Future = Future()
        self._inbox.put((job, future, tag))
        return future.result()

    def cancel(self, tags: Collection[str]) -> None:
        """Stop the jobs handed in with these tags (their Results say "cancelled")."""
        self._inbox.put((None, None, frozenset(tags)))

    def summary(self) -> str:
        """How many jobs the engine trained, the most at once, and the mixed engine's line."""
        line = f"{self.jobs:,} jobs, up to {self.most_at_once} at once"
        mixing = self._executor.summary()
        return line if mixing is None else f"{line}; {mixing}"

    def _new_executor(self) -> InterleavedExecutor:
        return InterleavedExecutor(self.device, self.data_dir, max_jobs=sys.maxsize,
                                   mixed=self.mixed)

    def _serve(self) -> None:
        # the executor's future -> (job, the caller's future, tag)
        held: dict[Future, tuple[EvaluationJob, Future, str | None]] = {}
        while True:
            arrivals = [] if held else [self._inbox.get()]  # sleep while there is nothing to do
            while True:
                try:
                    arrivals.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for job, caller, tag in arrivals:
                if job is not None:
                    held[self._executor.submit(job)] = (job, caller, tag)
                    self.jobs += 1
            for job, _, tags in arrivals:
                if job is None:
                    for inner in [inner for inner, item in held.items() if item[2] in tags]:
                        self._executor.cancel(inner)
            try:
                self._executor.advance()
            except Exception as error:  # noqa: BLE001 - never leave a caller waiting forever
                for job, caller, _ in held.values():
                    caller.set_result(failed_results(job, describe(error), self.device))
                held.clear()
                self._executor.shutdown(cancel=True)
                self._executor = self._new_executor()
                continue
            self.most_at_once = max(self.most_at_once, self._executor.training)
            for inner in [inner for inner in held if inner.done()]:
                held.pop(inner)[1].set_result(inner.result())


_ENGINES: dict[tuple[Any, ...], ResidentEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine(device: str, data_dir: str | None, mixed: bool | None) -> ResidentEngine:
    """This process's engine for `device`, `data_dir` and `mixed` (started on first use)."""
    key = (device, data_dir, mixed)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = ResidentEngine(device, data_dir, mixed=mixed)
        return _ENGINES[key]


def run_job_together(job: EvaluationJob, device: str, data_dir: str | None,
                     mixed: bool | None = None, tag: str | None = None) -> list[dict[str, Any]]:
    """`run_job_as_dicts`, but trained in this process's resident engine together with the jobs
    other threads hand it meanwhile (what a Dask worker's task runs with `jobs_per_worker`);
    `tag` names it for `cancel`."""
    return [result.to_dict() for result in engine(device, data_dir, mixed).run(job, tag)]


def cancel(tags: Collection[str]) -> None:
    """Stop the jobs of this process's engines that were handed in with these tags."""
    for each in _engines():
        each.cancel(tags)


def summaries() -> list[str]:
    """A line on each engine of this process that has trained something."""
    return [each.summary() for each in _engines() if each.jobs]


def _engines() -> list[ResidentEngine]:
    with _ENGINES_LOCK:
        return list(_ENGINES.values())
