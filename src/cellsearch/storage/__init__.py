"""Persistence of search runs: runs, architectures, evaluations, the top list over time, steps.

`Storage` (in `base`) is the interface, with its lifecycle in the docstring. A backend is chosen
by URL (`open_storage`): `sqlite:///run.db` (the default backend; a plain path means the same)
is one SQLite file in WAL mode, `memory://` a dict-based store for tests and throwaway runs. A
new backend is one module and one entry in `BACKENDS`. The search reads and writes only through
the interface; nothing outside this package knows SQL, and importing this package loads no
backend (so not sqlite3) until one is opened. Storage knows nothing of torch or of the search's
rules.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cellsearch.errors import UserError
from cellsearch.storage.base import DuplicateEvaluationError, Storage, StorageError
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

__all__ = [
    "BACKENDS",
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
    "has_data",
    "open_storage",
]

# URL scheme -> "module:function" opening a backend, called as `function(location, create=...,
# sole_writer=...)` with what follows `scheme://`.
BACKENDS = {
    "sqlite": "cellsearch.storage.sqlite:open_sqlite",
    "memory": "cellsearch.storage.memory:open_memory",
}
_LAZY = {"SQLiteStorage": "cellsearch.storage.sqlite",
         "InMemoryStorage": "cellsearch.storage.memory"}


def __getattr__(name: str) -> Any:  # the backends' classes, imported when first asked for
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def split_url(url: str | Path) -> tuple[str, str]:
    """(scheme, location): `sqlite:///run.db` -> ("sqlite", "run.db"), `sqlite:////abs/run.db`
    -> ("sqlite", "/abs/run.db") (SQLAlchemy's convention), a plain path -> ("sqlite", path)."""
    text = str(url)
    if not text.strip():
        raise UserError("the database name is empty: give a file name or a storage URL")
    scheme, separator, rest = text.partition("://")
    if not separator or "/" in scheme or not scheme:
        return "sqlite", text
    if scheme not in BACKENDS:
        raise UserError(f"unknown storage {scheme}:// in {text!r}; known: "
                        + ", ".join(f"{name}://" for name in BACKENDS)
                        + " (or a plain path, an SQLite file)")
    location = rest[1:] if scheme == "sqlite" and rest.startswith("/") else rest
    if scheme == "sqlite" and not location:
        raise UserError(f"{text!r} names no file: write sqlite:///run.db")
    return scheme, location


def open_storage(url: str | Path, *, create: bool = True, sole_writer: bool = False) -> Storage:
    """The storage at `url` (see `split_url`). With `create=False` (commands that only read, like
    `cellsearch top`) nothing is created or changed, and a missing store is a UserError.
    `sole_writer`: fail with a UserError, rather than wait, if another process writes there (a
    search's driver holds it until the storage is closed)."""
    scheme, location = split_url(url)
    module, function = BACKENDS[scheme].split(":")
    return getattr(importlib.import_module(module), function)(
        location, create=create, sole_writer=sole_writer)


def has_data(url: str | Path) -> bool:
    """Whether the store at `url` holds anything yet (a search starting anew checks its whole
    configuration before it writes anything)."""
    scheme, location = split_url(url)
    if scheme != "sqlite":
        return False
    path = Path(location)
    return path.exists() and path.is_file() and path.stat().st_size > 0
