"""`SQLiteStorage`: the default storage, one SQLite file (stdlib `sqlite3`, WAL mode).

The file is marked as ours twice: the SQLite header's `application_id` and a `cellsearch_schema`
table holding the schema version. An existing file is checked through a read-only connection
before anything opens it for writing, so pointing `--db` at some other file is refused without
touching a byte of it.

Schema (version 1; every table but the schema marker is keyed by run):

    runs            id, config (JSON), created_at, updated_at
    architectures   run_id, hash, graph (JSON), equations, parent_hash, mutation, created_step,
                    filter_outcome                                  primary key (run_id, hash)
    evaluations     id, run_id, architecture_hash, task, settings (JSON), settings_key,
                    hidden_size, num_parameters, metric, value, status, reason, valid (JSON),
                    test (JSON), epochs, wall_seconds, device, step, created_at
                    unique (run_id, architecture_hash, task, settings_key): the never-repeat rule
    steps           run_id, step, kind, architecture_hash, outcome, description, completed_at,
                    top_list_step: the step whose top_list rows hold the list after this step
    top_list        run_id, step, rank, architecture_hash, fitness
                    rows only for steps that changed the list (membership, order or fitness)

A NaN `value` (a run that failed before its first epoch) is stored as NULL.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Sequence
from urllib.parse import quote

from cellsearch.errors import UserError
from cellsearch.evaluation.result import Result
from cellsearch.storage.base import (
    Storage,
    StorageError,
    check_filter_outcome,
    check_next_step,
    duplicate_evaluation,
    utc_now,
)
from cellsearch.storage.records import (
    ArchitectureRecord,
    EvaluationRecord,
    RunRecord,
    StepRecord,
    TopEntry,
)

SCHEMA_VERSION = 2  # 2: evaluations.history and .tokens (a version 1 database gains them at its
# first write)
# "CeLS" in the SQLite header (offset 68), so `file` and SQLite tools can tell our databases apart.
APPLICATION_ID = 0x43654C53
MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE cellsearch_schema (
    version INTEGER NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    config TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE architectures (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    hash TEXT NOT NULL,
    graph TEXT NOT NULL,
    equations TEXT NOT NULL,
    parent_hash TEXT,
    mutation TEXT,
    created_step INTEGER NOT NULL,
    filter_outcome TEXT CHECK (filter_outcome IN ('passed', 'failed', 'exempt')),
    position INTEGER NOT NULL,
    PRIMARY KEY (run_id, hash)
);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    architecture_hash TEXT NOT NULL,
    task TEXT NOT NULL,
    settings TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    hidden_size INTEGER NOT NULL,
    num_parameters INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    status TEXT NOT NULL,
    reason TEXT,
    valid TEXT NOT NULL,
    test TEXT NOT NULL,
    epochs INTEGER NOT NULL,
    wall_seconds REAL NOT NULL,
    device TEXT NOT NULL,
    step INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    tokens INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, architecture_hash, task, settings_key),
    FOREIGN KEY (run_id, architecture_hash) REFERENCES architectures (run_id, hash)
);
CREATE INDEX evaluations_by_step ON evaluations (run_id, step);
CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    step INTEGER NOT NULL,
    kind TEXT NOT NULL,
    architecture_hash TEXT,
    outcome TEXT NOT NULL,
    description TEXT NOT NULL,
    completed_at TEXT NOT NULL,
    top_list_step INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE top_list (
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    architecture_hash TEXT NOT NULL,
    fitness REAL,
    PRIMARY KEY (run_id, step, rank),
    FOREIGN KEY (run_id, architecture_hash) REFERENCES architectures (run_id, hash)
);
"""

# The evaluations columns that hold a Result, named as in `Result.to_dict`; those in
# _JSON_COLUMNS hold JSON text.
_COLUMNS = (
    "task",
    "settings",
    "hidden_size",
    "num_parameters",
    "metric",
    "status",
    "reason",
    "valid",
    "test",
    "epochs",
    "wall_seconds",
    "device",
    "history",
    "tokens",
)
_VERSION_2_COLUMNS = ("history", "tokens")
_JSON_COLUMNS = frozenset({"settings", "valid", "test", "history"})
_INSERTED = ("run_id", "architecture_hash", "step", "created_at", "settings_key", "value", *_COLUMNS)
_INSERT_EVALUATION = (
    f"INSERT INTO evaluations ({', '.join(_INSERTED)})"
    f" VALUES ({', '.join('?' for _ in _INSERTED)})"
)


class SQLiteStorage(Storage):
    """A run history in an SQLite file (or `":memory:"`); see the module docstring.

    A new or empty file gets the schema; an existing one must be a cellsearch database of a schema
    version this code reads, else UserError, and the file is left exactly as it was.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, sole_writer: bool = False):
        """`read_only`: open an existing database through a read-only connection (`mode=ro`),
        which never creates, changes or adds to any file; what is not a cellsearch database,
        an empty file included, is a UserError. `sole_writer`: hold an exclusive lock on the
        file until `close`, and fail at once if another process holds it (`_lock_file`)."""
        self.path, self.read_only = str(path), read_only
        self._lock = _lock_file(Path(self.path)) if sole_writer and self.path != MEMORY else None
        try:
            self._open()
        except BaseException:
            if self._lock is not None:
                self._lock.close()
            raise

    def _open(self) -> None:
        if self.read_only:
            check_database(self.path, must_exist=True)
            uri = f"file:{quote(str(Path(self.path).resolve()))}?mode=ro"
            self._connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
            self._wal, self._version = False, _schema_version(self._connection)
            return
        if self.path != MEMORY:
            check_database(self.path)
        self._connection = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._connection.execute("PRAGMA foreign_keys = ON")
        # WAL (readers never wait for the writer) from the first write on: opening alone changes
        # nothing, so a start that fails its checks leaves the file as it was.
        self._wal = False
        self._version = _schema_version(self._connection)
        if self._version is None:
            # One script, one transaction: a crash leaves either no schema or all of it.
            self._connection.executescript(
                "BEGIN IMMEDIATE;"
                + _SCHEMA
                + f"INSERT INTO cellsearch_schema (version) VALUES ({SCHEMA_VERSION});"
                + f"PRAGMA application_id = {APPLICATION_ID};"
                + "COMMIT;"
            )
            self._version = SCHEMA_VERSION

    # -- runs -----------------------------------------------------------------------------------

    def create_run(self, config: Mapping[str, Any]) -> int:
        stamp = utc_now()
        with self._transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (config, created_at, updated_at) VALUES (?, ?, ?)",
                (_dump(config), stamp, stamp),
            )
            return int(cursor.lastrowid)

    def get_runs(self) -> list[RunRecord]:
        rows = self._connection.execute(
            "SELECT id, config, created_at, updated_at FROM runs ORDER BY id"
        ).fetchall()
        return [RunRecord(row[0], json.loads(row[1]), row[2], row[3]) for row in rows]

    def update_run_config(self, run_id: int, config: Mapping[str, Any]) -> None:
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE runs SET config = ?, updated_at = ? WHERE id = ?",
                (_dump(config), utc_now(), run_id),
            )
            if cursor.rowcount != 1:
                raise StorageError(f"no run {run_id}")

    # -- architectures ----------------------------------------------------------------------------

    def add_architecture(self, run_id: int, record: ArchitectureRecord) -> bool:
        check_filter_outcome(record.filter_outcome)
        with self._transaction() as connection:
            self._require_run(connection, run_id)
            cursor = connection.execute(
                "INSERT OR IGNORE INTO architectures (run_id, hash, graph, equations, parent_hash,"
                " mutation, created_step, filter_outcome, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                " (SELECT COUNT(*) FROM architectures WHERE run_id = ?))",
                (
                    run_id,
                    record.hash,
                    record.graph_json,
                    record.equations,
                    record.parent_hash,
                    record.mutation,
                    record.created_step,
                    record.filter_outcome,
                    run_id,
                ),
            )
            return cursor.rowcount == 1

    def get_architectures(self, run_id: int) -> list[ArchitectureRecord]:
        rows = self._connection.execute(
            "SELECT hash, graph, equations, parent_hash, mutation, created_step, filter_outcome"
            " FROM architectures WHERE run_id = ? ORDER BY position",
            (run_id,),
        ).fetchall()
        return [ArchitectureRecord(*row) for row in rows]

    def set_filter_outcome(self, run_id: int, architecture_hash: str, outcome: str) -> None:
        check_filter_outcome(outcome, required=True)
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE architectures SET filter_outcome = ? WHERE run_id = ? AND hash = ?",
                (outcome, run_id, architecture_hash),
            )
            if cursor.rowcount != 1:
                raise StorageError(f"run {run_id} has no architecture {architecture_hash}")

    # -- evaluations ------------------------------------------------------------------------------

    def add_evaluations(
        self, run_id: int, architecture_hash: str, step: int, results: Sequence[Result]
    ) -> None:
        stamp = utc_now()
        rows = [
            (
                run_id,
                architecture_hash,
                step,
                stamp,
                result.settings.key(),
                _fitness_column(result.value),
                *_result_columns(result),
            )
            for result in results
        ]
        with self._transaction() as connection:
            exists = connection.execute(
                "SELECT 1 FROM architectures WHERE run_id = ? AND hash = ?",
                (run_id, architecture_hash),
            ).fetchone()
            if exists is None:
                raise StorageError(f"run {run_id} has no architecture {architecture_hash}")
            try:
                connection.executemany(_INSERT_EVALUATION, rows)
            except sqlite3.IntegrityError as error:
                if "UNIQUE" in str(error):
                    raise duplicate_evaluation(architecture_hash) from None
                raise StorageError(str(error)) from None

    def get_evaluations(
        self,
        run_id: int,
        *,
        architecture_hash: str | None = None,
        task: str | None = None,
        step: int | None = None,
    ) -> list[EvaluationRecord]:
        columns = [c for c in _COLUMNS if self._version != 1 or c not in _VERSION_2_COLUMNS]
        query = (
            f"SELECT architecture_hash, step, created_at, {', '.join(columns)} FROM evaluations"
            " WHERE run_id = ?"
        )
        parameters: list[Any] = [run_id]
        for column, value in (
            ("architecture_hash", architecture_hash),
            ("task", task),
            ("step", step),
        ):
            if value is not None:
                query += f" AND {column} = ?"
                parameters.append(value)
        rows = self._connection.execute(query + " ORDER BY id", parameters).fetchall()
        return [_evaluation(row) for row in rows]

    def count_evaluations(self, run_id: int) -> int:
        return self._connection.execute(
            "SELECT COUNT(*) FROM evaluations WHERE run_id = ?", (run_id,)
        ).fetchone()[0]

    # -- steps and the top list -------------------------------------------------------------------

    def complete_step(self, run_id: int, record: StepRecord, top_list: Sequence[TopEntry]) -> None:
        with self._transaction() as connection:
            self._require_run(connection, run_id)
            last = self._last_step(connection, run_id)
            check_next_step(run_id, record.step, expected=0 if last is None else last + 1)
            previous_step, previous = (
                (None, []) if last is None else self._top_rows(connection, run_id, last)
            )
            entries = [
                (entry.architecture_hash, _fitness_column(entry.fitness)) for entry in top_list
            ]
            snapshot_step = record.step
            if previous_step is not None and previous == entries:
                snapshot_step = previous_step
            else:
                connection.executemany(
                    "INSERT INTO top_list (run_id, step, rank, architecture_hash, fitness)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(run_id, record.step, rank, *entry) for rank, entry in enumerate(entries)],
                )
            connection.execute(
                "INSERT INTO steps (run_id, step, kind, architecture_hash, outcome, description,"
                " completed_at, top_list_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    record.step,
                    record.kind,
                    record.architecture_hash,
                    record.outcome,
                    record.description,
                    utc_now(),
                    snapshot_step,
                ),
            )
            connection.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (utc_now(), run_id))

    def get_steps(self, run_id: int) -> list[StepRecord]:
        rows = self._connection.execute(
            "SELECT step, kind, architecture_hash, outcome, description, completed_at FROM steps"
            " WHERE run_id = ? ORDER BY step",
            (run_id,),
        ).fetchall()
        return [StepRecord(*row) for row in rows]

    def last_completed_step(self, run_id: int) -> int | None:
        return self._last_step(self._connection, run_id)

    def get_top_list(self, run_id: int, step: int | None = None) -> list[TopEntry]:
        if step is None:
            step = self._last_step(self._connection, run_id)
            if step is None:
                return []
        _, rows = self._top_rows(self._connection, run_id, step)
        return [
            TopEntry(architecture_hash, math.nan if fitness is None else fitness)
            for architecture_hash, fitness in rows
        ]

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        if self._wal:
            # Out of WAL mode when the writer is done: the file then stands alone, and a reader
            # (`mode=ro`) needs no -wal and -shm files, which it would otherwise create. Fails
            # harmlessly while another connection is open; the next close tries again.
            try:
                self._connection.execute("PRAGMA journal_mode = DELETE")
            except sqlite3.Error:
                pass
        self._connection.close()
        if self._lock is not None:
            self._lock.close()  # (closing the file releases the lock)
            self._lock = None

    # -- helpers ----------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the write lock from its start (BEGIN IMMEDIATE)."""
        connection = self._connection
        if not self._wal and self.path != MEMORY:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as error:  # e.g. its directory is read-only
                raise UserError(
                    f"cannot write {self.path}: {error} (a search needs a writable file and"
                    " directory)"
                ) from None
            self._wal = True
        if self._version == 1:  # version 2 adds the learning curves and the tokens trained
            connection.executescript(
                "BEGIN IMMEDIATE;"
                "ALTER TABLE evaluations ADD COLUMN history TEXT NOT NULL DEFAULT '[]';"
                "ALTER TABLE evaluations ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;"
                "UPDATE cellsearch_schema SET version = 2;"
                "COMMIT;"
            )
            self._version = 2
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        if connection.in_transaction:
            connection.execute("COMMIT")

    @staticmethod
    def _require_run(connection: sqlite3.Connection, run_id: int) -> None:
        if connection.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise StorageError(f"no run {run_id}")

    @staticmethod
    def _last_step(connection: sqlite3.Connection, run_id: int) -> int | None:
        return connection.execute(
            "SELECT MAX(step) FROM steps WHERE run_id = ?", (run_id,)
        ).fetchone()[0]

    @staticmethod
    def _top_rows(
        connection: sqlite3.Connection, run_id: int, step: int
    ) -> tuple[int, list[tuple[str, float | None]]]:
        """(the step whose top_list rows hold the list after step `step`, those rows in rank
        order as (architecture hash, fitness column))."""
        row = connection.execute(
            "SELECT top_list_step FROM steps WHERE run_id = ? AND step = ?", (run_id, step)
        ).fetchone()
        if row is None:
            raise StorageError(f"run {run_id} has no completed step {step}")
        rows = connection.execute(
            "SELECT architecture_hash, fitness FROM top_list WHERE run_id = ? AND step = ?"
            " ORDER BY rank",
            (run_id, row[0]),
        ).fetchall()
        return row[0], [tuple(entry) for entry in rows]


def open_sqlite(location: str, *, create: bool = True, sole_writer: bool = False) -> SQLiteStorage:
    """`sqlite:///<location>` (`storage.open_storage`); read-only unless `create`."""
    if not create:
        return SQLiteStorage(location, read_only=True)
    return SQLiteStorage(location, sole_writer=sole_writer)


def _lock_file(path: Path) -> BinaryIO | None:
    """An exclusive flock on the database file, held while the returned file is open: a second
    search driver writing the same run would break the never-repeat rule. (SQLite locks with
    fcntl byte ranges, which are independent of flock on Linux; the kernel drops the lock when
    the process dies, even by SIGKILL.) None where flock does not exist (not POSIX): no guard.

    The lock comes before SQLite opens the file: two starts on one new file would otherwise race,
    and the loser could find a half-made schema. Appending creates a missing file (the checks of
    a new search have passed by now) and changes no existing one."""
    try:
        import fcntl
    except ImportError:
        return None
    check_database(str(path))
    try:
        handle = open(path, "ab")
    except OSError as error:  # permission denied, a read-only file system, ...
        raise UserError(
            f"cannot write {path}: {error.strerror} (a search needs a writable file and"
            " directory; `cellsearch top`, `stats` and `report` read it where it is)"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another `cellsearch search` or `reproduce` is writing {path}") from None
    return handle


def check_database(path: str, must_exist: bool = False) -> None:
    """Raise UserError unless `path` is a cellsearch database this code reads, or (unless
    `must_exist`) absent or empty.

    Reads through a read-only connection, so a file that is refused is never modified.
    """
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{path} is a directory, not a cellsearch database")
    if must_exist and not file.exists():
        raise UserError(f"no database at {path}; run `cellsearch search --db {path}` first")
    if must_exist and file.stat().st_size == 0:
        raise UserError(f"{path} is empty: not a cellsearch database")
    if not file.parent.is_dir():
        raise UserError(f"cannot create {path}: directory {file.parent} does not exist")
    if not file.exists() or file.stat().st_size == 0:
        return
    not_ours = f"{path} is not a cellsearch database; give --db a new file name"
    try:
        connection = sqlite3.connect(f"file:{quote(str(file.resolve()))}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise UserError(f"cannot open {path}: {error}") from None
    try:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        if application_id != APPLICATION_ID or not _has_schema(connection):
            raise UserError(not_ours)
        row = connection.execute("SELECT version FROM cellsearch_schema").fetchone()
    except sqlite3.DatabaseError:
        raise UserError(not_ours) from None
    finally:
        connection.close()
    if row is None or row[0] > SCHEMA_VERSION:
        version = "unknown" if row is None else row[0]
        raise UserError(
            f"{path} has cellsearch schema version {version}; this cellsearch reads version"
            f" {SCHEMA_VERSION} (upgrade cellsearch)"
        )


def _schema_version(connection: sqlite3.Connection) -> int | None:
    """The database's schema version (None: no schema yet)."""
    if not _has_schema(connection):
        return None
    row = connection.execute("SELECT version FROM cellsearch_schema").fetchone()
    return None if row is None else row[0]


def _has_schema(connection: sqlite3.Connection) -> bool:
    """Whether the database holds the `cellsearch_schema` marker table."""
    row = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cellsearch_schema'"
    ).fetchone()
    return row is not None


def _dump(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _fitness_column(fitness: float) -> float | None:
    return None if math.isnan(fitness) else float(fitness)


def _result_columns(result: Result) -> tuple:
    """`result` as the values of `_COLUMNS`."""
    data = result.to_dict()
    return tuple(
        _dump(data[column]) if column in _JSON_COLUMNS else data[column] for column in _COLUMNS
    )


def _evaluation(row: tuple) -> EvaluationRecord:
    """An EvaluationRecord from (architecture_hash, step, created_at, *`_COLUMNS`)."""
    architecture_hash, step, created_at, *values = row
    data = {
        column: json.loads(value) if column in _JSON_COLUMNS else value
        for column, value in zip(_COLUMNS, values)  # (a version 1 row ends before history)
    }
    return EvaluationRecord(architecture_hash, step, Result.from_dict(data), created_at)
