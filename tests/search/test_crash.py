"""Crash safety of the real command: `cellsearch search` is killed with SIGKILL at random moments
while it writes, and resumed, over and over. Nothing completed may be lost or repeated, the file
must stay intact, and the run must end exactly as an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellsearch.storage import InMemoryStorage, SQLiteStorage
from tests.search.test_driver import contents, search

ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "evaluator=tests.search.fake:evaluate",
    "mutator=tests.search.fake:mutate",
    "initial_settings=3",
    "settings_per_task=2",
    "top_size=4",
    "job_size=1",  # a commit per setting: many moments to be killed between and during writes
    "max_steps=30",
]
KILLS = 10  # at most; every life of the process is killed a random moment after its first write


def evaluations_stored(path: Path) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return connection.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        connection.close()


def stored_rows(path: Path) -> set[tuple]:
    """Every stored evaluation with its row id: a row that survives keeps its id."""
    connection = sqlite3.connect(path)
    try:
        query = "SELECT id, architecture_hash, task, settings_key, settings, value FROM evaluations"
        return set(connection.execute(query).fetchall())
    finally:
        connection.close()


def integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path):
    reference = InMemoryStorage()
    search(reference, RUN)
    path = tmp_path / "search.db"
    command = [
        sys.executable,
        "-m",
        "cellsearch",
        "search",
        "--db",
        str(path),
        "--device",
        "cpu",
        "--quiet",
    ]
    command += [
        item
        for assignment in [*RUN, "evaluation_options.sleep=0.02"]
        for item in ("--set", assignment)
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    rng = random.Random(7)
    kills = 0
    committed: list[set[tuple]] = []  # what was stored at each kill
    while True:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if kills < KILLS:
            # Wait until this life has written something, then kill it a random moment later.
            before = evaluations_stored(path)
            while process.poll() is None and evaluations_stored(path) == before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None and kills < KILLS:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            kills += 1
            assert integrity(path) == "ok"
            committed.append(stored_rows(path))
            continue
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        break
    assert kills >= KILLS // 2  # a fast machine may finish the run in fewer lives
    assert integrity(path) == "ok"
    final = stored_rows(path)
    assert all(rows <= final for rows in committed)  # nothing committed was lost or redone
    with SQLiteStorage(path) as storage:
        assert contents(storage) == contents(reference)
