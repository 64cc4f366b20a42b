"""Where evaluations run: in the driver's process or in a pool of local worker processes.

An `EvaluationJob` names an architecture, a task and the settings to train on it; an `Executor`
runs jobs (`submit`, `as_completed`, in the style of `concurrent.futures`) and hands back one
`Result` per setting. Failures come back as failed Results, never as exceptions. Executors know
nothing of the search's rules and never touch storage.
"""

from __future__ import annotations

from cellsearch.errors import UserError
from cellsearch.evaluation.job import DEFAULT_EVALUATOR, EvaluationJob, failed_results
from cellsearch.executors.base import Executor, check_options, resolve_function, run_job
from cellsearch.executors.inprocess import InProcessExecutor
from cellsearch.executors.interleaved import InterleavedExecutor
from cellsearch.executors.processes import ProcessExecutor

__all__ = [
    "DEFAULT_EVALUATOR",
    "EXECUTORS",
    "EvaluationJob",
    "Executor",
    "check_options",
    "InProcessExecutor",
    "InterleavedExecutor",
    "ProcessExecutor",
    "failed_results",
    "make_executor",
    "resolve_function",
    "run_job",
]

EXECUTORS = ("inprocess", "interleaved", "mixed", "processes", "dask", "dask-local")


def make_executor(
    kind: str,
    *,
    workers: int | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    scheduler: str | None = None,
    jobs_per_worker: int | None = None,
) -> Executor:
    """The executor `kind` evaluating on `device`: "inprocess", "interleaved" (up to `workers`
    jobs training at once in this process, default 64), "mixed" (the same, their windows in
    shared steps of the mixed engine), "processes" (`workers` local
    processes, default 2), "dask" (the cluster at `scheduler`) or "dask-local" (a local Dask
    cluster of `workers` processes, default one per GPU); for these two, `jobs_per_worker` N
    makes each worker train up to N jobs at once, together (`executors.resident`)."""
    if jobs_per_worker is not None and kind not in ("dask", "dask-local"):
        raise UserError("--jobs-per-worker is for --executor dask or dask-local; in one process,"
                        " --executor mixed trains up to --workers jobs together")
    if kind == "inprocess":
        return InProcessExecutor(device=device, data_dir=data_dir)
    if kind in ("interleaved", "mixed"):
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        return InterleavedExecutor(device=device, data_dir=data_dir, max_jobs=workers or 64,
                                   mixed=kind == "mixed")
    if kind == "processes":
        workers = 2 if workers is None else workers
        return ProcessExecutor(workers=workers, device=device, data_dir=data_dir)
    if kind in ("dask", "dask-local"):
        if kind == "dask" and not scheduler:
            raise UserError("--executor dask needs --scheduler tcp://HOST:PORT "
                            "(or use --executor dask-local)")
        from cellsearch.executors.dask import (
            DaskExecutor,  # the optional extra cellsearch[dask]
        )

        address = scheduler if kind == "dask" else None
        return DaskExecutor(address, workers=workers, device=device, data_dir=data_dir,
                            jobs_per_worker=jobs_per_worker)
    raise UserError(f"unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
