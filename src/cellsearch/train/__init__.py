"""Training: the hyperparameter space (§3.7), budget -> hidden size (§3.7), schedules (§3.6).

The modules re-exported here are pure Python, so the search can use them without importing torch.
"""

from cellsearch.train.budget import hidden_size_for_budget, parameter_count
from cellsearch.train.hyperparameters import SearchSpace, Settings, parse_assignments
from cellsearch.train.schedules import (
    MusicSchedule,
    PTBSchedule,
    Schedule,
    SearchSchedule,
    schedule_for,
)

__all__ = [
    "MusicSchedule",
    "PTBSchedule",
    "Schedule",
    "SearchSchedule",
    "SearchSpace",
    "Settings",
    "hidden_size_for_budget",
    "parameter_count",
    "parse_assignments",
    "schedule_for",
]
