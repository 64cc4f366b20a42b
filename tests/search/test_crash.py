"""Crash safety of the real command: `cellsearch search` is killed with SIGKILL at random moments
while it writes, and resumed, over and over, in process and with worker processes running many
steps at once. Nothing completed may be lost or repeated, the file must stay intact, no worker may
outlive its driver, and the run must end exactly as an uninterrupted run with the same seed."""

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
# At most; every life of the process is killed a random moment after its first write. The suite
# kills 10 times; CELLSEARCH_CRASH_KILLS=60 is the long loop (benchmarks/RESULTS.md).
KILLS = int(os.environ.get("CELLSEARCH_CRASH_KILLS", "10"))
RUN = [
    "evaluator=tests.search.fake:evaluate",
    "mutator=tests.search.fake:mutate",
    "initial_settings=3",
    "settings_per_task=2",
    "top_size=4",
    "job_size=1",  # a commit per setting: many moments to be killed between and during writes
    f"max_steps={max(30, KILLS * 2)}",
]
ORPHAN_SECONDS = 5.0  # a worker notices its driver is gone within a second (executors.processes)


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


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has exited; its new parent reaps it
            living.add(pid)
    return living


@pytest.mark.slow
@pytest.mark.parametrize(
    "executor",
    [
        [],
        ["--executor", "processes", "--workers", "2"],
        ["--executor", "dask-local", "--workers", "2"],
    ],
    ids=["inprocess", "processes", "dask-local"],
)
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path, executor):
    if executor and not Path("/proc/self/stat").exists():
        pytest.skip("finding a killed driver's workers reads /proc")
    if "dask-local" in executor:
        pytest.importorskip("distributed")
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
        *executor,
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
        # Output to a file, not a pipe: workers inherit it, and an orphan holding a pipe open
        # would hang the test instead of failing it.
        log = tmp_path / "search.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT
            )
        if kills < KILLS:
            # Wait until this life has written something, then kill it a random moment later.
            before = evaluations_stored(path)
            while process.poll() is None and evaluations_stored(path) == before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None and kills < KILLS:
            workers = children(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait()
            deadline = time.monotonic() + ORPHAN_SECONDS
            while alive(workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(workers), "a worker process outlived its killed driver"
            kills += 1
            assert integrity(path) == "ok"
            committed.append(stored_rows(path))
            continue
        process.wait(timeout=120)
        assert process.returncode == 0, log.read_text()
        break
    print(f"{kills} SIGKILLs ({' '.join(executor) or 'in process'})")  # shown with pytest -s
    assert kills >= KILLS // 2  # a fast machine may finish the run in fewer lives
    assert integrity(path) == "ok"
    final = stored_rows(path)
    assert all(rows <= final for rows in committed)  # nothing committed was lost or redone
    with SQLiteStorage(path) as storage:
        assert contents(storage) == contents(reference)
