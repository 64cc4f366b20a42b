"""What only the SQLite file backend promises: the file survives reopening, is marked as ours,
and a file that is not ours is refused without being touched."""

from __future__ import annotations

import math
import os
import sqlite3

import pytest

from cellsearch.errors import UserError
from cellsearch.storage import (
    ArchitectureRecord,
    SQLiteStorage,
    StepRecord,
    TopEntry,
    open_storage,
)
from cellsearch.storage.sqlite import APPLICATION_ID, SCHEMA_VERSION
from tests.storage.test_conformance import CONFIG, ok


def snapshot(path):
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_a_database_survives_reopening(tmp_path):
    path = tmp_path / "search.db"
    with SQLiteStorage(path) as storage:
        run = storage.create_run(CONFIG)
        storage.add_architecture(run, ArchitectureRecord("a", "{}", "h' = x\n"))
        storage.add_evaluations(run, "a", 0, [ok()])
        storage.complete_step(
            run, StepRecord(0, "initialize", None, "initialized"), [TopEntry("a", 1.0)]
        )
    with SQLiteStorage(path) as storage:
        assert storage.latest_run().config == CONFIG
        assert [record.result for record in storage.get_evaluations(run)] == [ok()]
        assert storage.get_top_list(run) == [TopEntry("a", 1.0)]


def test_the_file_is_marked_in_wal_mode_while_open_and_stands_alone_after(tmp_path):
    path = tmp_path / "search.db"
    storage = SQLiteStorage(path)
    storage.create_run({})
    assert storage._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    storage.close()
    assert [item.name for item in tmp_path.iterdir()] == ["search.db"]
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert connection.execute("SELECT version FROM cellsearch_schema").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_foreign_keys_are_enforced(tmp_path):
    with SQLiteStorage(tmp_path / "search.db") as storage:
        run = storage.create_run(CONFIG)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            storage._connection.execute(
                "INSERT INTO top_list (run_id, step, rank, architecture_hash, fitness)"
                " VALUES (?, 0, 0, 'unknown', 1.0)",
                (run,),
            )


def test_an_empty_file_becomes_a_database(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with SQLiteStorage(path) as storage:
        assert storage.create_run(CONFIG) == 1


@pytest.mark.parametrize("kind", ["text", "other-sqlite", "wrong-application"])
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path, kind):
    path = tmp_path / "other.db"
    if kind == "text":
        path.write_text("just some notes, not a database\n" * 40)
    else:
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE notes (text TEXT)")
        if kind == "wrong-application":
            connection.execute("CREATE TABLE cellsearch_schema (version INTEGER)")
            connection.execute("PRAGMA application_id = 7")
        connection.commit()
        connection.close()
    before = snapshot(path)
    with pytest.raises(UserError, match="is not a cellsearch database"):
        SQLiteStorage(path)
    assert snapshot(path) == before
    assert sorted(item.name for item in tmp_path.iterdir()) == ["other.db"]


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "search.db"
    SQLiteStorage(path).close()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE cellsearch_schema SET version = ?", (SCHEMA_VERSION + 1,))
    connection.commit()
    connection.close()
    with pytest.raises(UserError, match="upgrade cellsearch"):
        SQLiteStorage(path)


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        SQLiteStorage(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        SQLiteStorage(tmp_path / "missing" / "search.db")
    with pytest.raises(UserError, match="no database at"):
        open_storage(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_a_reader_sees_what_a_writer_committed(tmp_path):
    path = tmp_path / "search.db"
    with SQLiteStorage(path) as writer, SQLiteStorage(path) as reader:
        run = writer.create_run(CONFIG)
        writer.add_architecture(run, ArchitectureRecord("a", "{}", "h' = x\n"))
        writer.add_evaluations(run, "a", 0, [ok()])
        assert reader.count_evaluations(run) == 1


def test_a_version_1_database_is_read_as_it_is_and_gains_history_at_its_first_write(tmp_path):
    from cellsearch.evaluation.result import Result
    from cellsearch.evaluation.settings import Settings
    from cellsearch.storage import ArchitectureRecord

    def result(learning_rate, history=()):
        settings = Settings(init_scale=1.0, learning_rate=learning_rate, max_grad_norm=5.0,
                            num_layers=1, num_parameters=5000)
        return Result(task="arith", settings=settings, hidden_size=8, num_parameters=5000,
                      metric="accuracy", valid={"accuracy": 0.5}, history=history)

    path = tmp_path / "old.db"
    with SQLiteStorage(path) as storage:
        run = storage.create_run({})
        storage.add_architecture(run, ArchitectureRecord("a", "{}", ""))
        storage.add_evaluations(run, "a", 0, [result(0.5)])
    connection = sqlite3.connect(path)  # as cellsearch's schema version 1 left it
    connection.executescript("ALTER TABLE evaluations DROP COLUMN history;"
                             "ALTER TABLE evaluations DROP COLUMN tokens;"
                             "UPDATE cellsearch_schema SET version = 1;")
    connection.close()
    before = snapshot(path)
    with SQLiteStorage(path, read_only=True) as storage:
        (old,) = storage.get_evaluations(run)
    assert old.result.history == () and snapshot(path) == before
    assert [item.name for item in tmp_path.iterdir()] == ["old.db"]
    curve = ({"epoch": 1, "learning_rate": 0.2, "accuracy": 0.4, "nll": float("nan")},)
    with SQLiteStorage(path) as storage:
        storage.add_evaluations(run, "a", 1, [result(0.2, curve)])
        records = storage.get_evaluations(run)
    assert [record.result.history for record in records][0] == ()
    stored = records[1].result.history[0]
    assert stored["accuracy"] == 0.4 and math.isnan(stored["nll"])
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT version FROM cellsearch_schema").fetchone()[0] == 2
    connection.close()


# -- choosing a backend by URL ------------------------------------------------------------------


def test_storage_urls_name_a_backend_and_where_it_keeps_its_data():
    from cellsearch.storage import split_url

    assert split_url("run.db") == ("sqlite", "run.db")
    assert split_url("sqlite:///run.db") == ("sqlite", "run.db")
    assert split_url("sqlite:////tmp/run.db") == ("sqlite", "/tmp/run.db")
    assert split_url("memory://") == ("memory", "")
    for bad, message in [("postgres://db", "unknown storage postgres://"),
                         ("sqlite://", "names no file"), ("", "is empty")]:
        with pytest.raises(UserError, match=message):
            split_url(bad)


def test_open_storage_opens_the_backend_its_url_names(tmp_path):
    from cellsearch.storage import (
        InMemoryStorage,
        SQLiteStorage,
        has_data,
        open_storage,
    )

    url = f"sqlite:///{tmp_path / 'run.db'}"
    assert not has_data(url)
    with open_storage(url) as storage:
        assert isinstance(storage, SQLiteStorage) and storage.path == str(tmp_path / "run.db")
        storage.create_run({"seed": 1})
    assert has_data(url) and has_data(tmp_path / "run.db")
    with open_storage(tmp_path / "run.db", create=False) as storage:
        assert storage.read_only and len(storage.get_runs()) == 1
    assert isinstance(open_storage("memory://"), InMemoryStorage)
    with pytest.raises(UserError, match="nothing to read"):
        open_storage("memory://", create=False)


def test_a_sole_writer_holds_the_file_until_it_closes(tmp_path):
    from cellsearch.storage import open_storage

    path = tmp_path / "run.db"
    first = open_storage(path, sole_writer=True)
    with pytest.raises(UserError, match="another `cellsearch search` or `reproduce` is writing"):
        open_storage(path, sole_writer=True)
    with open_storage(path, create=False) as reader:  # readers are never kept out
        assert reader.get_runs() == []
    first.close()
    open_storage(path, sole_writer=True).close()
