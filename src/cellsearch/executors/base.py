"""How one job (`evaluation.job.EvaluationJob`) is run anywhere (`run_job`), and the `Executor`
interface every backend implements.

A job never raises: an evaluator that raises, returns the wrong number of results, or dies with its
worker process yields one failed `Result` per setting, with the reason, which the search records
like any other result. Only `KeyboardInterrupt`/`SystemExit` escape, so Ctrl-C still stops a search
without recording anything.

Executors know nothing of the search's rules and never touch storage: they take jobs and hand back
lists of Results.
"""

from __future__ import annotations

import abc
import importlib
import inspect
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from cellsearch.cells.graph import CellGraph
from cellsearch.errors import UserError
from cellsearch.evaluation.job import EvaluationJob, describe, failed_results
from cellsearch.evaluation.result import Result


def resolve_function(spec: str) -> Callable[..., Any]:
    """The function named by "package.module:function"; UserError naming what is missing."""
    module_name, separator, name = spec.partition(":")
    if not separator or not module_name or not name:
        raise UserError(f"expected a function as 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import {module_name!r} for {spec!r}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"module {module_name!r} has no function {name!r}")
    return function


def check_options(function: Callable[..., Any], options: Iterable[str]) -> None:
    """UserError unless `function` accepts every keyword in `options` (a typo in an evaluation
    option would otherwise turn every evaluation of a search into a recorded failure)."""
    parameters = inspect.signature(function).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        accepted = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY]
        raise UserError(
            f"{function.__module__}.{function.__name__} takes no option {', '.join(unknown)};"
            f" its options are {', '.join(accepted)}"
        )


def run_job(job: EvaluationJob, device: str = "cpu", data_dir: str | None = None) -> list[Result]:
    """Run `job` in this process; one Result per setting, failed ones carrying the reason."""
    try:
        evaluate = resolve_function(job.evaluator)
        graph = CellGraph.from_json(job.graph_json)
        results = evaluate(
            graph, job.task, list(job.settings), device=device, data_dir=data_dir, **job.options
        )
        return checked_results(job, results)
    except Exception as error:  # noqa: BLE001 - any failure of one evaluation is a recorded result
        return failed_results(job, describe(error), device)


def run_job_as_dicts(
    job: EvaluationJob, device: str, data_dir: str | None
) -> list[dict[str, Any]]:
    """`run_job` in a worker process: the Results as plain dicts, to send back to the driver."""
    return [result.to_dict() for result in run_job(job, device, data_dir)]


def checked_results(
    job: EvaluationJob, results: Iterable[Result | Mapping[str, Any]]
) -> list[Result]:
    """`results` as Results (plain dicts are accepted, as workers send them), or ValueError unless
    they answer exactly the job's task and settings, in order."""
    results = [item if isinstance(item, Result) else Result.from_dict(item) for item in results]
    if len(results) != len(job.settings):
        raise ValueError(
            f"the evaluator returned {len(results)} results for {len(job.settings)} settings"
        )
    for result, settings in zip(results, job.settings, strict=True):
        if result.task != job.task or result.settings.key() != settings.key():
            raise ValueError(
                f"the evaluator returned a result for task {result.task} and settings"
                f" {result.settings.key()}, expected {job.task} and {settings.key()}"
            )
    return results


def checked_or_failed(
    job: EvaluationJob, answer: Iterable[Result | Mapping[str, Any]], device: str
) -> list[Result]:
    """`checked_results(job, answer)`, or failed Results with the reason when the answer is
    malformed (a malformed answer is a failed evaluation)."""
    try:
        return checked_results(job, answer)
    except Exception as error:  # noqa: BLE001
        return failed_results(job, describe(error), device)


class Executor(abc.ABC):
    """Where jobs run, in the style of `concurrent.futures`.

    Lifecycle (the search driver is the only caller):

        with make_executor("processes", workers=2) as executor:
            executor.start()                                     # before anything is stored
            futures = [executor.submit(job) for job in jobs]     # the jobs of one search stage
            for future in executor.as_completed(futures):        # in completion order
                results = future.result()                        # never raises for a bad job
                ... commit results to storage before using them ...

    `start` acquires what the executor needs (connects to a cluster, starts one) and raises
    UserError when it cannot; the driver calls it before it writes anything, so that a search
    that cannot run leaves its database as it was. `submit` starts the executor when `start` was
    not called. `submit` may start the job at once (worker processes) or when `as_completed`
    reaches it (in process, so that each finished job is committed before the next one starts).
    Leaving the `with` block because of an exception cancels what has not finished.
    """

    def start(self) -> None:
        """Acquire what jobs will need; UserError when it is unavailable. Idempotent."""

    @abc.abstractmethod
    def submit(self, job: EvaluationJob) -> Future:
        """Schedule `job`; the future's result is `list[Result]`, one per setting."""

    @abc.abstractmethod
    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        """Yield each of `futures` (from this executor's `submit`) once it is done."""

    def summary(self) -> str | None:
        """A line on how the work went beyond its results (the mixed executor's shared steps),
        or None."""
        return None

    def shutdown(self, cancel: bool = False) -> None:
        """Release workers; with `cancel`, abandon jobs that have not finished."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.shutdown(cancel=exc_type is not None)
