"""`History`: the completed evaluations the search knows of, indexed for the questions it asks,
and the performance estimate of §3.1 (eq. 1) computed from them.

The driver fills a History from storage when a search starts or resumes, and the search adds each
job's results once they are committed, so a History is always a view of stored data.

Performance of an architecture on a task is its best validation metric over all its settings.
A run counts when its validation metric is a finite number (`scored`), whatever its status: a run
that diverged after some good epochs reports the metrics of its best epoch, which it did reach,
while a run that failed or diverged before finishing an epoch counts for nothing. The same rule
picks an architecture's best settings (the pools of §3.3), the GRU's reference, and whether the
memorization filter was passed. Its estimate against the reference (the GRU) is

    ratio(task)  = best(architecture, task) / best(GRU, task)
    fitness      = min over the search tasks of ratio(task)                  (eq. 1)

For a metric where lower is better (music's nll, never a search task in the paper) the ratio is
inverted, best(GRU) / best(architecture), so that a larger ratio is better for every task. A ratio
is NaN when either side has no scored run (or the divisor is not positive); a NaN fitness
ranks below every number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

from cellsearch.evaluation.result import LOWER_IS_BETTER, Result
from cellsearch.evaluation.settings import Settings


class _Queries:
    """The questions the search asks of evaluations; subclasses say which results are visible
    (`_bucket`)."""

    _metrics: dict[str, str]

    def _bucket(self, architecture_hash: str, task: str) -> dict[str, Result]:
        raise NotImplementedError

    def results(self, architecture_hash: str, task: str) -> list[Result]:
        return list(self._bucket(architecture_hash, task).values())

    def tried_keys(self, architecture_hash: str, task: str) -> set[str]:
        """The settings keys already evaluated (a fresh set the caller may extend)."""
        return set(self._bucket(architecture_hash, task))

    def count(self, architecture_hash: str, task: str) -> int:
        return len(self._bucket(architecture_hash, task))

    def tried_settings(self, architecture_hash: str, task: str) -> list[Settings]:
        """Every setting tried, in key order (so that what is drawn from it is reproducible)."""
        bucket = self._bucket(architecture_hash, task)
        return [bucket[key].settings for key in sorted(bucket)]

    def best_settings(self, architecture_hash: str, task: str, limit: int) -> list[Settings]:
        """The `limit` settings with the best validation metric, best first (ties by key);
        runs that are not `scored` excluded."""
        ranked = sorted(
            (result for result in self.results(architecture_hash, task) if scored(result)),
            key=lambda result: (_merit(result), result.settings.key()),
        )
        return [result.settings for result in ranked[:limit]]

    def best_value(self, architecture_hash: str, task: str) -> float:
        """The best validation metric over the architecture's settings on `task` (NaN if none)."""
        best = min(
            (result for result in self.results(architecture_hash, task) if scored(result)),
            key=_merit,
            default=None,
        )
        return math.nan if best is None else best.value

    def passed(self, architecture_hash: str, task: str, threshold: float) -> bool:
        """Whether some scored run reached `threshold` (the memorization filter, §3.1)."""
        return any(
            scored(result) and result.value >= threshold
            for result in self.results(architecture_hash, task)
        )

    def ratio(self, architecture_hash: str, reference_hash: str, task: str) -> float:
        """best(architecture) relative to best(reference) on `task`; see the module docstring."""
        lower_is_better = self._metrics.get(task) in LOWER_IS_BETTER
        best = self.best_value(architecture_hash, task)
        reference = self.best_value(reference_hash, task)
        if math.isnan(best) or math.isnan(reference):
            return math.nan
        if lower_is_better:
            return reference / best if best > 0 else math.nan
        return best / reference if reference > 0 else math.nan

    def fitness(self, architecture_hash: str, reference_hash: str, tasks: Iterable[str]) -> float:
        """Eq. 1 of §3.1: the smallest ratio over `tasks` (NaN if any ratio is NaN)."""
        ratios = [self.ratio(architecture_hash, reference_hash, task) for task in tasks]
        return math.nan if any(math.isnan(ratio) for ratio in ratios) else min(ratios)


class History(_Queries):
    """Results by (architecture hash, task), each (architecture, task, settings key) once, with
    the search step that recorded it, so that `as_of` can show the search as it stood after an
    earlier step (the search's steps in flight plan from such views)."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], dict[str, Result]] = defaultdict(dict)
        self._steps: dict[tuple[str, str, str], int] = {}  # (architecture, task, key) -> step
        # The best scored result per (architecture, task), kept as results arrive: the fitness of
        # every top-list member is recomputed after each step.
        self._best: dict[tuple[str, str], Result] = {}
        self._metrics: dict[str, str] = {}  # task -> the metric its results report
        self._per_step: dict[int, int] = defaultdict(int)  # step -> results recorded
        self._counted = (-1, 0)  # (step, results of steps up to it), see count_through
        self.total = 0

    def add(self, architecture_hash: str, result: Result, step: int = 0) -> None:
        bucket = self._results[architecture_hash, result.task]
        key = result.settings.key()
        if key in bucket:
            raise ValueError(f"{architecture_hash} on {result.task} already has settings {key}")
        bucket[key] = result
        self._steps[architecture_hash, result.task, key] = step
        self._per_step[step] += 1
        if step <= self._counted[0]:  # a step counted already (not in a search's order)
            self._counted = (-1, 0)
        self.total += 1
        self._metrics.setdefault(result.task, result.metric)
        best = self._best.get((architecture_hash, result.task))
        if scored(result) and (best is None or _merit(result) < _merit(best)):
            self._best[architecture_hash, result.task] = result

    def _bucket(self, architecture_hash: str, task: str) -> dict[str, Result]:
        return self._results.get((architecture_hash, task), {})

    def best_value(self, architecture_hash: str, task: str) -> float:
        best = self._best.get((architecture_hash, task))
        return math.nan if best is None else best.value

    def step_of(self, architecture_hash: str, task: str, key: str) -> int:
        return self._steps[architecture_hash, task, key]

    def count_through(self, step: int) -> int:
        """How many results steps up to `step` recorded. A search asks for finished steps, with
        `step` growing as it goes on: the sum is extended from the last answer instead of taken
        over every step again."""
        last, count = self._counted
        if step < last:
            return sum(n for recorded, n in self._per_step.items() if recorded <= step)
        count += sum(self._per_step.get(recorded, 0) for recorded in range(last + 1, step + 1))
        self._counted = (step, count)
        return count

    def as_of(self, step: int, own: Iterable[str] = (), own_step: int | None = None) -> HistoryView:
        """The results of steps up to `step`, and those of architectures `own` up to `own_step`:
        what a step in flight sees (see `HistoryView`)."""
        return HistoryView(self, step, frozenset(own), step if own_step is None else own_step)


class HistoryView(_Queries):
    """A History as it stood after step `through`, plus the results that steps up to `own_step`
    recorded for the architectures in `own`. Adding through a view records in the History with
    step `own_step`. Queries filter the History as it is when asked, so a view stays valid while
    other steps add to the History. The driver starts a step only when every step its view shows
    has finished, so only the view's own `add` changes what it shows (which its cache relies on).
    """

    def __init__(self, history: History, through: int, own: frozenset[str], own_step: int):
        self.history, self.through, self.own, self.own_step = history, through, own, own_step
        self._metrics = history._metrics
        self._best: dict[tuple[str, str], float] = {}

    def add(self, architecture_hash: str, result: Result) -> None:
        self.history.add(architecture_hash, result, self.own_step)
        self._best.pop((architecture_hash, result.task), None)

    def best_value(self, architecture_hash: str, task: str) -> float:
        if (architecture_hash, task) not in self._best:
            self._best[architecture_hash, task] = super().best_value(architecture_hash, task)
        return self._best[architecture_hash, task]

    def _bucket(self, architecture_hash: str, task: str) -> dict[str, Result]:
        bucket = self.history._bucket(architecture_hash, task)
        limit = self.own_step if architecture_hash in self.own else self.through
        step_of = self.history.step_of
        return {
            key: result
            for key, result in bucket.items()
            if step_of(architecture_hash, task, key) <= limit
        }


def fitness_order(fitness: float) -> float:
    """A sort key putting the highest fitness first and NaN last."""
    return math.inf if math.isnan(fitness) else -fitness


def scored(result: Result) -> bool:
    """Whether `result` has a finite validation metric, the only thing the search compares (a
    diverged run keeps the metrics of its best epoch before diverging)."""
    return math.isfinite(result.value)


def _merit(result: Result) -> float:
    """Smaller is better, whatever the metric's direction."""
    return result.value if result.metric in LOWER_IS_BETTER else -result.value
