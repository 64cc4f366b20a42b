"""The tasks as the rest of the package knows them without building one: one entry a task, its
class, metric, parameter budgets (§3.7) and schedule (§3.6). `cellsearch.tasks` builds tasks from
these entries; the hyperparameter space, the search's checks, the executors and the command line
read their facts here. A new task is its module under `tasks/` and one entry below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TaskEntry:
    name: str
    factory: str  # "module:Class", called with `options`, the seed and the task's options
    metric: str  # the search metric: "accuracy" (higher is better) or "nll" (lower is better)
    budgets: tuple[int, ...]  # §3.7's parameter budgets
    # §3.6's schedule when trained on its own: "search" (the search's; no dropout), "ptb" (Zaremba
    # et al.'s: dropout, max_epoch and decay in the space) or "music" (dropout in the space)
    schedule: str = "search"
    options: Mapping[str, Any] = field(default_factory=dict)


MUSIC = ("nottingham", "piano-midi", "jsb", "musedata")

ENTRIES = (
    TaskEntry("memorize", "cellsearch.tasks.memorize:Memorize", "accuracy", (25_000,)),
    TaskEntry("arith", "cellsearch.tasks.arith:Arith", "accuracy", (250_000, 1_000_000)),
    TaskEntry("xml", "cellsearch.tasks.xml:Xml", "accuracy", (250_000, 1_000_000)),
    TaskEntry("ptb", "cellsearch.tasks.ptb:PennTreebank", "accuracy", (5_000_000,), "ptb"),
    *(TaskEntry(name, "cellsearch.tasks.music:Music", "nll", (100_000, 1_000_000), "music",
                {"name": name}) for name in MUSIC),
)
BY_NAME = {entry.name: entry for entry in ENTRIES}
NAMES = tuple(BY_NAME)
