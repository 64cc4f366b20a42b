"""The plain values a storage holds and hands back: runs, architectures, evaluations, steps, and
top-list entries. Frozen dataclasses, no behaviour beyond a few derived properties.

They deliberately carry no search rules: what an `outcome` string means, or how a fitness is
computed, is the search's business (`cellsearch.search`); storage only keeps what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from cellsearch.evaluation.result import Result

# Memorization-filter outcomes of an architecture (§3.1), as the search records them.
FILTER_PASSED, FILTER_FAILED, FILTER_EXEMPT = "passed", "failed", "exempt"
FILTER_OUTCOMES = (FILTER_PASSED, FILTER_FAILED, FILTER_EXEMPT)


@dataclass(frozen=True)
class RunRecord:
    """One run: its resolved configuration (a JSON object) and when it was made and last changed
    (ISO 8601 UTC). A search's configuration is a `SearchConfig`'s; a reproduction of the paper's
    tables (`cellsearch reproduce`) says `"kind": "reproduction"`."""

    run_id: int
    config: Mapping[str, Any]
    created_at: str
    updated_at: str

    @property
    def kind(self) -> str:
        return str(self.config.get("kind", "search"))


@dataclass(frozen=True)
class ArchitectureRecord:
    """A cell the run has proposed, keyed by `CellGraph.canonical_hash()`.

    `parent_hash` and `mutation` say where it came from (None for the initial LSTM and GRU);
    `created_step` is the step that first proposed it; `filter_outcome` is one of
    `FILTER_OUTCOMES`, or None while it has not been through the memorization filter.
    """

    hash: str
    graph_json: str
    equations: str
    parent_hash: str | None = None
    mutation: str | None = None
    created_step: int = 0
    filter_outcome: str | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    """One completed evaluation: `result` of one setting of architecture `architecture_hash`,
    recorded during search step `step`, at `created_at`."""

    architecture_hash: str
    step: int
    result: Result
    created_at: str = ""  # when it was stored (ISO 8601 UTC, milliseconds)

    @property
    def task(self) -> str:
        return self.result.task

    @property
    def settings_key(self) -> str:
        return self.result.settings.key()

    @property
    def value(self) -> float:
        return self.result.value


@dataclass(frozen=True)
class TopEntry:
    """One member of the top list and its fitness (eq. 1 of §3.1) when the list was recorded."""

    architecture_hash: str
    fitness: float


@dataclass(frozen=True)
class StepRecord:
    """A completed search step: what it did (`kind`, e.g. "initialize", "reevaluate", "mutate"),
    on which architecture, its `outcome` (a short machine-readable word) and a one-line
    `description` for people. `completed_at` is set by the storage when the step is recorded."""

    step: int
    kind: str
    architecture_hash: str | None
    outcome: str
    description: str = ""
    completed_at: str = ""
