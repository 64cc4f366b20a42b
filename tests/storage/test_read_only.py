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


@pytest.fixture
def read_only_copy(searched, tmp_path):
    """The searched database in a read-only file system (a read-only bind mount; skipped where
    this process may not mount)."""
    import shutil
    import subprocess

    source, target = tmp_path / "source", tmp_path / "mounted"
    source.mkdir()
    target.mkdir()
    shutil.copy(searched, source / "run.db")
    mounted = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(target)],
                          capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        yield target / "run.db"
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_a_read_only_location_is_read_and_a_search_there_is_told_why(read_only_copy, capsys):
    for command in READERS:
        assert main([*command, "--db", str(read_only_copy)]) == 0
    capsys.readouterr()
    for path in (read_only_copy, read_only_copy.parent / "new.db"):
        assert main(["search", "--db", str(path), "--preset", "tiny", "--quiet"]) == 2
        assert "Read-only file system (a search needs a writable" in capsys.readouterr().err
