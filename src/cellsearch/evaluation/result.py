"""`Result`: what one trained setting yields, as a plain JSON-able value (no torch).

Workers return Results; only the driver stores them. A failed run (divergence, out of memory) is
a Result with `status` and `reason`, never an exception that stops a search.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from cellsearch.evaluation.settings import Settings

OK, DIVERGED, FAILED = "ok", "diverged", "failed"
LOWER_IS_BETTER = ("nll",)  # the metrics a task may report as its `metric`


@dataclass(frozen=True)
class Result:
    """One setting of one architecture trained on one task.

    `metric` names the task's search metric ("accuracy", or "nll" for music); `valid` and `test`
    hold the metrics of the epoch with the best validation loss (e.g. accuracy, perplexity, nll,
    frame_accuracy); `history` the validation metrics and learning rate of every epoch. `value`
    is that epoch's validation `metric`, the number the search compares (NaN when the run failed
    before finishing an epoch).
    """

    task: str
    settings: Settings
    hidden_size: int
    num_parameters: int
    metric: str
    status: str = OK
    reason: str | None = None
    valid: Mapping[str, float] = field(default_factory=dict)
    test: Mapping[str, float] = field(default_factory=dict)
    epochs: int = 0
    wall_seconds: float = 0.0
    device: str = "cpu"
    # Per epoch trained: {"epoch": e, "learning_rate": rate, and every validation metric}, for
    # learning curves (empty for results stored before cellsearch kept it).
    history: tuple[Mapping[str, float], ...] = ()
    tokens: int = 0  # timesteps of training data read (minibatch rows x unrolled steps x windows)

    @property
    def value(self) -> float:
        return float(self.valid.get(self.metric, math.nan))

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = self.settings.to_dict()
        data["valid"], data["test"] = dict(self.valid), dict(self.test)
        data["history"] = [dict(entry) for entry in self.history]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        fields = dict(data)
        fields["settings"] = Settings.from_dict(fields["settings"])
        fields["history"] = tuple(dict(entry) for entry in fields.get("history", ()))
        return cls(**fields)


def json_number(value: float | None) -> float | None:
    """`value` for JSON output: None for NaN and infinities, which are not JSON."""
    return value if value is not None and math.isfinite(value) else None
