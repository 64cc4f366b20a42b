"""The storage backends every conformance test runs against (optuna's STORAGE_MODES style)."""

from __future__ import annotations

from typing import Iterator

import pytest

from cellsearch.storage import InMemoryStorage, SQLiteStorage, Storage

STORAGE_MODES = ("sqlite-file", "sqlite-memory", "in-memory")


def make_storage(mode: str, tmp_path) -> Storage:
    if mode == "sqlite-file":
        return SQLiteStorage(tmp_path / "search.db")
    if mode == "sqlite-memory":
        return SQLiteStorage(":memory:")
    if mode == "in-memory":
        return InMemoryStorage()
    raise ValueError(mode)


@pytest.fixture(params=STORAGE_MODES)
def storage(request, tmp_path) -> Iterator[Storage]:
    backend = make_storage(request.param, tmp_path)
    yield backend
    backend.close()
