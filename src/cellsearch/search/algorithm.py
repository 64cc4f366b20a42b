"""The interface between a search algorithm and the driver that runs it, and the registry that
`config.algorithm` chooses from.

An algorithm decides what to evaluate; the driver (`search.driver`) carries out its requests,
commits them, keeps up to `steps_in_flight` steps running and resumes after a crash. Step n is
`plan(n)`, driven to its end (a generator of `procedure.Request`s: record an architecture,
evaluate jobs, record a filter outcome), then `conclude(n, ending)`, which completes the step
with its top list. What step n asks for must depend only on the configuration, the algorithm's
state after step `seen_step(n)` and the earlier evaluations of the architectures in
`targets(n)`: that is what makes a run resumable and the same whatever order jobs finish in.

A new algorithm is one module with a class built as `Class(config, mutate, architectures=...,
history=..., top_lists=...)` from stored state, and one entry in `ALGORITHMS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Generator, Mapping, Protocol, Sequence

if TYPE_CHECKING:  # (the configuration checks its `algorithm` against ALGORITHMS below)
    from cellsearch.search.config import SearchConfig
    from cellsearch.search.history import History
    from cellsearch.storage.records import ArchitectureRecord, TopEntry

# config.algorithm -> "module:class"
ALGORITHMS = {
    "paper": "cellsearch.search.procedure:Search",
    "regularized-evolution": "cellsearch.search.evolution:RegularizedEvolution",
}


class SearchAlgorithm(Protocol):
    config: SearchConfig
    completed: int | None  # the last concluded step (None: none yet)

    def __init__(
        self,
        config: SearchConfig,
        mutate: Any,
        *,
        architectures: Mapping[str, ArchitectureRecord] | None = None,
        history: History | None = None,
        top_lists: Mapping[int, Sequence[TopEntry]] | None = None,
    ) -> None: ...

    @property
    def top_list(self) -> tuple[TopEntry, ...]:
        """The top list (the population) after the last concluded step."""

    def seen_step(self, step: int) -> int:
        """The last step whose outcome step `step` plans from (-1: none)."""

    def seen_evaluations(self, step: int) -> int:
        """How many evaluations step `step`'s plan sees (for the evaluation budget)."""

    def targets(self, step: int) -> tuple[str, ...]:
        """The architectures step `step` evaluates."""

    def plan(self, step: int) -> Generator[Any, Any, Any]:
        """Step `step` up to its conclusion; returns what `conclude` takes."""

    def conclude(self, step: int, ending: Any) -> Generator[Any, Any, None]:
        """Close step `step` (every earlier step concluded): yields its CompleteStep."""


def algorithm_class(name: str) -> type[SearchAlgorithm]:
    """The class registered as `name` (a configuration has checked that it is known)."""
    module, _, attribute = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)
