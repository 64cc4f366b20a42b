"""`InProcessExecutor`: jobs run one at a time in the driver's own process (the default).

A job runs when `as_completed` (or `Future.result`) reaches it, not when it is submitted, so the
driver commits each finished job before the next one starts: a search killed mid-stage loses at
most the job that was running.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Iterator, Sequence

from cellsearch.evaluation.job import EvaluationJob
from cellsearch.executors.base import Executor, run_job


class _DeferredFuture(Future):
    """A future whose job runs in the caller's thread the first time its result is asked for."""

    def __init__(self, job: EvaluationJob, device: str, data_dir: str | None):
        super().__init__()
        self._job, self._device, self._data_dir = job, device, data_dir

    def run(self) -> None:
        if not self.done() and self.set_running_or_notify_cancel():
            self.set_result(run_job(self._job, self._device, self._data_dir))

    def result(self, timeout: float | None = None):
        self.run()
        return super().result(timeout)


class InProcessExecutor(Executor):
    """Runs each job in this process, on `device`, reading data from `data_dir`."""

    def __init__(self, device: str = "cpu", data_dir: str | None = None):
        self.device, self.data_dir = device, data_dir

    def submit(self, job: EvaluationJob) -> Future:
        return _DeferredFuture(job, self.device, self.data_dir)

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        for future in sorted(futures, key=lambda future: not future.done()):  # finished ones first
            if isinstance(future, _DeferredFuture):
                future.run()
            yield future

    def shutdown(self, cancel: bool = False) -> None:
        """Nothing runs in the background, so there is nothing to stop."""
