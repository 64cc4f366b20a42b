"""Learning-rate schedules and stopping rules of §3.6, driven by one validation score per epoch.

Lifecycle, the same for every schedule (the `Schedule` protocol):

    schedule = schedule_for("search", settings)
    while not schedule.done:
        train one epoch at schedule.learning_rate
        schedule.end_epoch(validation_score)      # lower is better, e.g. validation loss
        if schedule.is_best:
            keep this epoch's test metric         # the best-validation model is the one reported

Before the first `end_epoch`, `learning_rate` is the setting's rate and `epoch` is 0. After
`end_epoch`, `epoch` counts the epochs trained, `learning_rate` is the rate for the *next* epoch,
`is_best` tells whether the epoch just ended has the lowest validation score so far (strictly
lower; the first epoch always is), and `done` says whether to stop. A NaN score is never an
improvement, so a diverging run winds down like a plateau. `end_epoch` after `done` is a bug in the
caller and raises RuntimeError.

The schedules (epochs numbered from 1; "plateau epoch" = an epoch without improvement):

- `SearchSchedule`: once `patience` (3) consecutive plateau epochs have ended, the next
  `decay_epochs` (4) epochs run at rate * 1/2, * 1/4, * 1/8, * 1/16, whatever their scores, then
  training stops. Improving for 5 epochs then plateauing: epochs 1-8 at the initial rate, 9-12 at
  the halved rates, done after epoch 12. A cap of `max_epochs` (100, our choice: the paper gives
  none, and a model that keeps improving would otherwise train forever) also stops it.
- `MusicSchedule`: each time `patience` (10) consecutive plateau epochs have ended, the rate is
  multiplied by 0.8 from the next epoch on and the count restarts from zero. Training stops as
  soon as the rate falls below 1e-3 (the lowered rate is never used) or after `max_epochs` (800).
- `PTBSchedule` (Zaremba et al., 2014, as in their TensorFlow code): epoch e runs at
  rate * decay ** max(e - max_epoch, 0), i.e. epochs 1..max_epoch at the initial rate, epoch
  max_epoch + 1 at rate * decay, and so on; stops after `total_epochs` (30). Scores only drive
  `is_best`.

This module knows nothing of torch, models or data: it sees one number per epoch.
"""

from __future__ import annotations

import math
from typing import Protocol

from cellsearch.errors import UserError
from cellsearch.evaluation.settings import Settings

SCHEDULE_KINDS = ("search", "music", "ptb")


class Schedule(Protocol):
    """What a trainer reads and calls; see the module docstring for the exact lifecycle."""

    learning_rate: float  # the rate for the next epoch to train
    epoch: int  # epochs ended so far
    done: bool  # stop training: no further epoch
    is_best: bool  # the epoch just ended has the lowest validation score so far
    best_score: float  # the lowest validation score so far (inf before the first epoch)

    def end_epoch(self, valid_score: float) -> None:
        """Record the validation score (lower is better) of the epoch just trained."""


class _ValidationRecord:
    """The bookkeeping every schedule shares: epoch count, best score, `is_best`, `done`."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.epoch = 0
        self.done = False
        self.is_best = False
        self.best_score = math.inf

    def _record(self, valid_score: float) -> bool:
        """Count the epoch and return whether it improved on the best score."""
        if self.done:
            raise RuntimeError(f"{type(self).__name__}.end_epoch called after the schedule was done")
        self.epoch += 1
        score = float(valid_score)
        # NaN < x is False: a diverged epoch is never the best one.
        self.is_best = score < self.best_score
        if self.is_best:
            self.best_score = score
        return self.is_best


class SearchSchedule(_ValidationRecord):
    """The aggressive schedule of the architecture search (§3.6, used for Table 1)."""

    def __init__(
        self,
        learning_rate: float,
        *,
        patience: int = 3,
        decay_epochs: int = 4,
        factor: float = 0.5,
        max_epochs: int = 100,
    ) -> None:
        super().__init__(learning_rate)
        self.patience = _count("patience", patience, minimum=1)
        self.decay_epochs = _count("decay_epochs", decay_epochs, minimum=0)
        self.factor = _factor(factor)
        self.max_epochs = _count("max_epochs", max_epochs, minimum=1)
        self.epochs_without_improvement = 0
        self.decays_left: int | None = None  # None until the plateau is detected

    def end_epoch(self, valid_score: float) -> None:
        improved = self._record(valid_score)
        if self.decays_left is None:
            self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
            if self.epochs_without_improvement == self.patience:
                self.decays_left = self.decay_epochs
        if self.decays_left is not None:
            # Once decaying, scores no longer matter: the paper lowers the rate "for four
            # additional epochs" and then stops.
            if self.decays_left == 0:
                self.done = True
            else:
                self.learning_rate *= self.factor
                self.decays_left -= 1
        if self.epoch >= self.max_epochs:
            self.done = True


class MusicSchedule(_ValidationRecord):
    """The evaluation schedule for the music datasets (§3.6, used for Table 2)."""

    def __init__(
        self,
        learning_rate: float,
        *,
        patience: int = 10,
        factor: float = 0.8,
        min_learning_rate: float = 1e-3,
        max_epochs: int = 800,
    ) -> None:
        super().__init__(learning_rate)
        self.patience = _count("patience", patience, minimum=1)
        self.factor = _factor(factor)
        self.min_learning_rate = _positive("min_learning_rate", min_learning_rate)
        self.max_epochs = _count("max_epochs", max_epochs, minimum=1)
        if self.learning_rate < self.min_learning_rate:
            raise UserError(
                f"learning_rate {learning_rate} is below the music schedule's stopping rate "
                f"{min_learning_rate}: training would stop before it starts"
            )
        self.epochs_without_improvement = 0

    def end_epoch(self, valid_score: float) -> None:
        improved = self._record(valid_score)
        self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
        if self.epochs_without_improvement == self.patience:
            self.learning_rate *= self.factor
            self.epochs_without_improvement = 0  # "reset the counter"
        if self.learning_rate < self.min_learning_rate or self.epoch >= self.max_epochs:
            self.done = True


class PTBSchedule(_ValidationRecord):
    """The PTB evaluation schedule of Zaremba et al. (2014) (§3.6, used for Table 3)."""

    def __init__(self, learning_rate: float, *, max_epoch: int, decay: float, total_epochs: int = 30) -> None:
        super().__init__(learning_rate)
        self.initial_learning_rate = self.learning_rate
        self.max_epoch = _count("max_epoch", max_epoch, minimum=1)
        self.decay = _factor(decay, name="decay")
        self.total_epochs = _count("total_epochs", total_epochs, minimum=1)

    def end_epoch(self, valid_score: float) -> None:
        self._record(valid_score)
        if self.epoch >= self.total_epochs:
            self.done = True
            return
        # Closed form, as in Zaremba's code, rather than repeated multiplication: no drift.
        next_epoch = self.epoch + 1
        self.learning_rate = self.initial_learning_rate * self.decay ** max(next_epoch - self.max_epoch, 0)


def schedule_for(kind: str, settings: Settings, **constants: float) -> Schedule:
    """The schedule `kind` ("search", "music" or "ptb") starting at `settings.learning_rate`.

    `constants` go to the schedule's constructor (e.g. `max_epochs=2` for a cheap test run); the
    paper's values are the defaults. "ptb" takes `max_epoch` and `decay` from `settings`.
    """
    if kind == "search":
        return SearchSchedule(settings.learning_rate, **constants)
    if kind == "music":
        return MusicSchedule(settings.learning_rate, **constants)
    if kind == "ptb":
        if settings.max_epoch is None or settings.decay is None:
            raise UserError(
                "the ptb schedule needs settings with max_epoch and decay "
                "(draw them from SearchSpace.for_task('ptb'))"
            )
        return PTBSchedule(settings.learning_rate, max_epoch=settings.max_epoch, decay=settings.decay, **constants)
    raise UserError(f"unknown schedule {kind!r}; known schedules: {', '.join(SCHEDULE_KINDS)}")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _factor(value: float, *, name: str = "factor") -> float:
    # A factor of 1 is allowed (a constant rate); above 1 the "decay" would grow the rate.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
