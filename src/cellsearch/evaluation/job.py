"""What an executor runs: `EvaluationJob`, plain data (the architecture as graph JSON, one
task, the settings to train as one population, the evaluator's options and import path), and the
failed Results that stand for a job that could not run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cellsearch.evaluation import tasks
from cellsearch.evaluation.result import FAILED, Result
from cellsearch.evaluation.settings import Settings

DEFAULT_EVALUATOR = "cellsearch.train.evaluate:evaluate"


@dataclass(frozen=True)
class EvaluationJob:
    """Train `graph_json` on `task` once per entry of `settings` with the function `evaluator`
    ("module:function", called as `evaluate(graph, task, settings, device=..., data_dir=...,
    **options)` and returning one Result per setting, in order)."""

    architecture_hash: str
    graph_json: str
    task: str
    settings: tuple[Settings, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    evaluator: str = DEFAULT_EVALUATOR


def failed_results(job: EvaluationJob, reason: str, device: str = "cpu") -> list[Result]:
    """One failed Result per setting of `job`, each with `reason`."""
    return [
        Result(
            task=job.task,
            settings=settings,
            hidden_size=0,
            num_parameters=settings.num_parameters,
            metric=task_metric(job.task),
            status=FAILED,
            reason=reason,
            device=device,
        )
        for settings in job.settings
    ]


def describe(error: BaseException) -> str:
    """An exception as a one-line reason: its type and message."""
    return f"{type(error).__name__}: {error}"


def task_metric(task: str) -> str:
    """The search metric a task reports (`Task.metric`), known here without building the task."""
    return tasks.BY_NAME[task].metric if task in tasks.BY_NAME else "accuracy"
