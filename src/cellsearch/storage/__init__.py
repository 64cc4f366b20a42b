"""Persistence of search runs: runs, architectures, evaluations, the top list over time, steps.

`Storage` (in `base`) is the interface, with its lifecycle in the docstring; `SQLiteStorage` is the
default backend (one file, WAL mode) and `InMemoryStorage` a dict-based one for tests and
throwaway runs. The search reads and writes only through the interface; nothing outside this
package knows SQL. Storage knows nothing of torch or of the search's rules.
"""

from __future__ import annotations

from pathlib import Path

from cellsearch.storage.base import DuplicateEvaluationError, Storage, StorageError
from cellsearch.storage.memory import InMemoryStorage
from cellsearch.storage.records import (
    FILTER_EXEMPT,
    FILTER_FAILED,
    FILTER_OUTCOMES,
    FILTER_PASSED,
    ArchitectureRecord,
    EvaluationRecord,
    RunRecord,
    StepRecord,
    TopEntry,
)
from cellsearch.storage.sqlite import SQLiteStorage

__all__ = [
    "FILTER_EXEMPT",
    "FILTER_FAILED",
    "FILTER_OUTCOMES",
    "FILTER_PASSED",
    "ArchitectureRecord",
    "DuplicateEvaluationError",
    "EvaluationRecord",
    "InMemoryStorage",
    "RunRecord",
    "SQLiteStorage",
    "StepRecord",
    "Storage",
    "StorageError",
    "TopEntry",
    "open_storage",
]


def open_storage(path: str | Path, *, create: bool = True) -> Storage:
    """The storage in file `path` (SQLite). With `create=False` (commands that only read, like
    `cellsearch top`) the file is opened read-only: a missing or empty file is a UserError, and
    no file is created or changed."""
    return SQLiteStorage(path) if create else SQLiteStorage(path, read_only=True)
