"""Driving `Search` step plans by hand, answering each evaluation with scripted values, so tests
can set exactly what an architecture scores."""

from __future__ import annotations

from typing import Callable

from cellsearch.evaluation.result import OK, Result
from cellsearch.evaluation.settings import Settings
from cellsearch.executors import EvaluationJob
from cellsearch.search import Search
from cellsearch.search.procedure import CompleteStep, Evaluate
from cellsearch.storage import TopEntry
from tests.search.fake import FakeMutation, family_member, unit

# (architecture hash, task, settings) -> validation accuracy
Score = Callable[[str, str, Settings], float]


def result(task: str, settings: Settings, value: float, status: str = OK) -> Result:
    return Result(
        task=task,
        settings=settings,
        hidden_size=8,
        num_parameters=settings.num_parameters,
        metric="accuracy",
        status=status,
        valid={"accuracy": value},
    )


def answer_with(score: Score, status: str = OK) -> Callable[[EvaluationJob], list[Result]]:
    return lambda job: [
        result(job.task, settings, score(job.architecture_hash, job.task, settings), status)
        for settings in job.settings
    ]


def drive(search: Search, step: int, score: Score, status: str = OK) -> list:
    """Run step `step` of `search`, answering Evaluate requests with `score` (each result with
    `status`); the requests."""
    answer = answer_with(score, status)
    plan = search.step(step)
    requests, reply = [], None
    while True:
        try:
            request = plan.send(reply)
        except StopIteration:
            return requests
        requests.append(request)
        reply = [answer(job) for job in request.jobs] if isinstance(request, Evaluate) else None


def evaluations(requests: list) -> list[Evaluate]:
    return [request for request in requests if isinstance(request, Evaluate)]


def completion(requests: list) -> CompleteStep:
    (complete,) = [request for request in requests if isinstance(request, CompleteStep)]
    return complete


def stage_keys(requests: list, stage: str) -> list[str]:
    return [
        settings.key()
        for request in evaluations(requests)
        if request.stage == stage
        for job in request.jobs
        for settings in job.settings
    ]


CHILD = family_member("relu", 0.5)
OTHER_CHILD = family_member("sigm", 1.0)


def always(child) -> Callable:
    return lambda graph, rng: FakeMutation(child, "test mutation")


def varied(base: float, spread: float = 0.0) -> Callable[[str, str, Settings], float]:
    """`base`, plus a deterministic per-setting part in [0, spread)."""
    return lambda architecture_hash, task, settings: (
        base + spread * unit(architecture_hash, task, settings.key())
    )


def top_hashes(entries: list[TopEntry] | tuple[TopEntry, ...]) -> list[str]:
    return [entry.architecture_hash for entry in entries]


__all__ = [
    "CHILD",
    "OTHER_CHILD",
    "always",
    "completion",
    "drive",
    "evaluations",
    "stage_keys",
    "top_hashes",
    "varied",
]
