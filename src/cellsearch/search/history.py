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

from cellsearch.train.hyperparameters import Settings
from cellsearch.train.result import LOWER_IS_BETTER, Result


class History:
    """Results by (architecture hash, task), each (architecture, task, settings key) once."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], dict[str, Result]] = defaultdict(dict)
        # The best scored result per (architecture, task), kept as results arrive: the fitness of
        # every top-list member is recomputed after each step.
        self._best: dict[tuple[str, str], Result] = {}
        self._metrics: dict[str, str] = {}  # task -> the metric its results report
        self.total = 0

    def add(self, architecture_hash: str, result: Result) -> None:
        bucket = self._results[architecture_hash, result.task]
        key = result.settings.key()
        if key in bucket:
            raise ValueError(f"{architecture_hash} on {result.task} already has settings {key}")
        bucket[key] = result
        self.total += 1
        self._metrics.setdefault(result.task, result.metric)
        best = self._best.get((architecture_hash, result.task))
        if scored(result) and (best is None or _merit(result) < _merit(best)):
            self._best[architecture_hash, result.task] = result

    def results(self, architecture_hash: str, task: str) -> list[Result]:
        return list(self._results.get((architecture_hash, task), {}).values())

    def tried_keys(self, architecture_hash: str, task: str) -> set[str]:
        """The settings keys already evaluated (a fresh set the caller may extend)."""
        return set(self._results.get((architecture_hash, task), ()))

    def count(self, architecture_hash: str, task: str) -> int:
        return len(self._results.get((architecture_hash, task), ()))

    def tried_settings(self, architecture_hash: str, task: str) -> list[Settings]:
        """Every setting tried, in key order (so that what is drawn from it is reproducible)."""
        bucket = self._results.get((architecture_hash, task), {})
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
        best = self._best.get((architecture_hash, task))
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
