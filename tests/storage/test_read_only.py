"""Commands that only read (`top`, `stats`, `report`) open databases read-only: they never create,
change or add a file, whatever the file holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cellsearch.cli import main

READERS = (["top"], ["stats"], ["report"], ["top", "--json"], ["stats", "--json"])


def snapshot(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("searched") / "run.db"
    assert main(["search", "--db", str(path), "--preset", "tiny", "--set", "max_steps=1",
                 "--quiet", "--device", "cpu"]) == 0
    return path


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_reading_a_database_changes_no_file(searched, command, capsys):
    before = snapshot(searched.parent)
    assert set(before) == {"run.db"}  # the search left no -wal or -shm file behind
    assert main([*command, "--db", str(searched)]) == 0
    assert snapshot(searched.parent) == before


@pytest.mark.parametrize("command", READERS, ids=" ".join)
@pytest.mark.parametrize("content", [b"", b"not a database at all\n"], ids=["empty", "text"])
def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path, command, content, capsys):
    path = tmp_path / "other.db"
    path.write_bytes(content)
    assert main([*command, "--db", str(path)]) == 2
    assert "not a cellsearch database" in capsys.readouterr().err
    assert snapshot(tmp_path) == {"other.db": hashlib.sha256(content).hexdigest()}


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_missing_database_is_not_created(tmp_path, command, capsys):
    assert main([*command, "--db", str(tmp_path / "missing.db")]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
