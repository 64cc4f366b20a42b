"""`cellsearch search | top | stats` with the fake trainer: the cheap mode of each command, and
bad input as one line with exit code 2 that leaves the database as it was."""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest

from cellsearch.cells import zoo
from cellsearch.cli import main
from cellsearch.search import SearchConfig
from cellsearch.storage import SQLiteStorage
from tests.search.scripted import result
from tests.search.test_driver import contents
from tests.storage.test_sqlite import snapshot

FAKES = [
    "--set",
    "evaluator=tests.search.fake:evaluate",
    "--set",
    "mutator=tests.search.fake:mutate",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def database(tmp_path, capsys):
    path = tmp_path / "search.db"
    code, out, _ = run_cli(
        capsys,
        "search",
        "--db",
        str(path),
        "--preset",
        "tiny",
        *FAKES,
        "--set",
        "max_steps=8",
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0 and "run 1: 9 steps run now, last completed step 8" in out
    return path


def test_search_shows_progress_and_a_summary(tmp_path, capsys):
    path = tmp_path / "search.db"
    code, out, err = run_cli(
        capsys, "search", "--db", str(path), "--preset", "tiny", *FAKES, "--set", "max_steps=3"
    )
    assert code == 0
    assert "starting run 1 at step 0" in err and "step    3" in err and "initialized" in err
    assert "best:" in out and "cellsearch top --db" in out


def test_top_lists_the_best_with_ratios_and_equations(database, capsys):
    code, out, _ = run_cli(capsys, "top", "--db", str(database), "-n", "3")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("#")]
    assert 1 <= len(headers) <= 3 and headers[0].startswith("#1 ")
    assert "fitness" in headers[0] and "arith" in headers[0] and "xml" in headers[0]
    assert "h' =" in out

    code, out, _ = run_cli(capsys, "top", "--db", str(database), "-n", "500")
    count = sum(1 for line in out.splitlines() if line.startswith("#"))
    assert f"(only {count} architectures are in the top list so far; -n 500 asked" in out

    code, out, _ = run_cli(capsys, "top", "--db", str(database), "--json")
    entries = json.loads(out)
    assert [entry["rank"] for entry in entries] == list(range(1, len(entries) + 1))
    fitness = [entry["fitness"] for entry in entries]  # None (NaN: no successful run) ranks last
    known = [value for value in fitness if value is not None]
    assert known and fitness[: len(known)] == sorted(known, reverse=True)
    for entry in entries:  # eq. 1: fitness is the smallest per-task ratio
        if entry["fitness"] is not None:
            assert entry["fitness"] == pytest.approx(min(entry["ratios"].values()))
        assert set(entry["ratios"]) == {"arith", "xml"} and entry["equations"]


def test_top_shows_the_list_as_it_stood_after_the_last_completed_step(database, capsys):
    # A running search stores the evaluations of the step in progress: `top` must not mix them
    # into the ratios of a list ranked by the fitness stored with the last completed step.
    _, out, _ = run_cli(capsys, "top", "--db", str(database), "--json")
    before = json.loads(out)
    first = before[0]["hash"]
    with SQLiteStorage(database) as storage:
        config = SearchConfig.from_dict(storage.get_run(1).config)
        unfinished_step = storage.last_completed_step(1) + 1
        tried = {record.settings_key for record in storage.get_evaluations(1)}
        untried = next(s for s in config.space("arith").grid() if s.key() not in tried)
        storage.add_evaluations(1, first, unfinished_step, [result("arith", untried, 1.0)])
    connection = sqlite3.connect(database)
    counts = {
        (architecture, task): number
        for architecture, task, number in connection.execute(
            "SELECT architecture_hash, task, COUNT(*) FROM evaluations WHERE step < ?"
            " GROUP BY architecture_hash, task",
            (unfinished_step,),
        )
    }
    connection.close()
    _, out, _ = run_cli(capsys, "top", "--db", str(database), "--json")
    assert json.loads(out) == before
    # Settings evaluated: the search tasks' (memorization filter runs are not settings of a task).
    for entry in before:
        tasks = counts.get((entry["hash"], "arith"), 0) + counts.get((entry["hash"], "xml"), 0)
        assert entry["settings_evaluated"] == tasks
    assert any((entry["hash"], "memorize") in counts for entry in before)


def test_stats_reports_the_figures_of_section_3_4(database, capsys):
    code, out, _ = run_cli(capsys, "stats", "--db", str(database), "--json")
    figures = json.loads(out)
    connection = sqlite3.connect(database)
    total = connection.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    passed = connection.execute(
        "SELECT COUNT(*) FROM architectures WHERE filter_outcome = 'passed'"
    ).fetchone()[0]
    connection.close()
    assert figures["total_evaluations"] == total and figures["passed_filter"] == passed
    assert figures["steps_completed"] == 9 and figures["architectures_evaluated"] >= 2
    code, out, _ = run_cli(capsys, "stats", "--db", str(database))
    lines = dict(
        line.rsplit("  ", 1) for line in out.splitlines()[1:] if "step outcomes" not in line
    )
    assert code == 0 and int(lines["total evaluations".ljust(len(next(iter(lines))))]) == total
    assert "passed the memorization filter" in out and "settings per architecture" in out
    assert "failed or diverged evaluations" in out


def test_stats_counts_candidates_and_separates_the_kinds_of_evaluation(database, capsys):
    _, out, _ = run_cli(capsys, "stats", "--db", str(database), "--json")
    figures = json.loads(out)
    zoo_cells = tuple(zoo.get(name).canonical_hash() for name in ("lstm", "gru"))
    connection = sqlite3.connect(database)

    def count(sql, *parameters):
        return connection.execute(sql, parameters).fetchone()[0]

    initial = count("SELECT COUNT(*) FROM evaluations WHERE step = 0")
    filter_runs = count("SELECT COUNT(*) FROM evaluations WHERE task = 'memorize'")
    tasks = count("SELECT COUNT(*) FROM evaluations WHERE step > 0 AND task != 'memorize'")
    candidates = count(
        "SELECT COUNT(DISTINCT architecture_hash) FROM evaluations"
        " WHERE architecture_hash NOT IN (?, ?)",
        *zoo_cells,
    )
    passed = [
        row[0]
        for row in connection.execute(
            "SELECT hash FROM architectures WHERE filter_outcome = 'passed'"
        )
    ]
    task_settings = count(
        "SELECT COUNT(*) FROM evaluations WHERE task != 'memorize' AND architecture_hash IN"
        f" ({', '.join('?' * len(passed))})",
        *passed,
    )
    failed = count("SELECT COUNT(*) FROM evaluations WHERE status != 'ok'")
    connection.close()
    assert initial > 0 and filter_runs > 0 and tasks > 0 and passed
    assert (figures["initial_evaluations"], figures["filter_evaluations"]) == (initial, filter_runs)
    assert figures["task_evaluations"] == tasks
    assert figures["total_evaluations"] == initial + filter_runs + tasks
    # LSTM and GRU counted in neither figure of §3.4 (they are exempt from the filter).
    assert figures["architectures_evaluated"] == candidates >= figures["passed_filter"]
    assert figures["passed_filter"] == len(passed)
    # The settings of the search tasks only, not the filter runs of the same architectures.
    assert figures["settings_per_architecture"] == pytest.approx(task_settings / len(passed))
    assert figures["failed_evaluations"] == failed
    _, out, _ = run_cli(capsys, "stats", "--db", str(database))
    assert "LSTM and GRU at step 0  " in out and out.count("LSTM and GRU not counted") == 2


def test_resuming_a_finished_run_with_a_larger_budget(database, capsys):
    code, out, _ = run_cli(capsys, "search", "--db", str(database), "--quiet")
    assert code == 0 and "0 steps run now, last completed step 8" in out
    code, out, _ = run_cli(
        capsys, "search", "--db", str(database), "--set", "max_steps=10", "--quiet"
    )
    assert code == 0 and "2 steps run now, last completed step 10" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "mutation_rate=0.5"], "unknown search setting 'mutation_rate'"),
        (["--set", "seed=2"], "seed: stored 0, given 2"),
        (
            ["--set", "evaluator=tests.search.fake:missing"],
            "evaluator: stored 'tests.search.fake:evaluate'",
        ),
        (["--preset", "tiny", "--set", "max_steps=-1"], "max_steps must be an integer >= 0"),
    ],
)
def test_a_failed_start_leaves_the_database_untouched(database, capsys, argv, message):
    before = snapshot(database)
    code, out, err = run_cli(capsys, "search", "--db", str(database), *argv, "--quiet")
    assert code == 2 and out == ""
    assert err.startswith("cellsearch: error: ") and message in err and err.count("\n") == 1
    assert snapshot(database) == before


def test_an_unreachable_scheduler_leaves_the_database_as_it_was(database, tmp_path, capsys):
    pytest.importorskip("distributed")
    import dask

    new = tmp_path / "new.db"
    before = snapshot(database)
    unreachable = ["--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", "--quiet"]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        starts = [(new, ["--preset", "tiny", *FAKES]), (database, ["--set", "max_steps=9"])]
        for path, argv in starts:
            code, out, err = run_cli(capsys, "search", "--db", str(path), *argv, *unreachable)
            assert code == 2 and out == "" and err.count("\n") == 1
            assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in err
    assert not new.exists()
    assert snapshot(database) == before
    # Nothing binds the new database to the configuration of the start that failed.
    argv = ["--preset", "tiny", *FAKES, "--set", "seed=4", "--set", "max_steps=1", "--quiet"]
    code, out, _ = run_cli(capsys, "search", "--db", str(new), *argv)
    assert code == 0 and "last completed step 1" in out


def test_a_bad_new_search_creates_no_file(tmp_path, capsys):
    path = tmp_path / "new.db"
    code, _, err = run_cli(capsys, "search", "--db", str(path), "--set", "top_size=0")
    assert code == 2 and "top_size must be an integer >= 1" in err
    code, _, err = run_cli(
        capsys, "search", "--db", str(path), *FAKES, "--set", "mutator=nowhere.at_all:mutate"
    )
    assert code == 2 and "cannot import 'nowhere.at_all'" in err
    assert not path.exists()


@pytest.mark.parametrize("command", ["search", "top", "stats"])
def test_a_file_that_is_not_a_cellsearch_database(tmp_path, capsys, command):
    path = tmp_path / "notes.db"
    path.write_text("my notes\n" * 100)
    before = snapshot(path)
    code, _, err = run_cli(capsys, command, "--db", str(path))
    assert code == 2 and "is not a cellsearch database" in err and err.count("\n") == 1
    assert snapshot(path) == before


def test_reports_need_a_database(tmp_path, capsys):
    code, _, err = run_cli(capsys, "top", "--db", str(tmp_path / "absent.db"))
    assert code == 2 and "no database at" in err
    assert not (tmp_path / "absent.db").exists()


def test_worker_processes_record_what_the_driver_process_records(tmp_path, capsys):
    # Jobs complete out of order in a pool; the stored run must not depend on it.
    paths = {kind: tmp_path / f"{kind}.db" for kind in ("inprocess", "processes")}
    for kind, path in paths.items():
        argv = ["search", "--db", str(path), "--preset", "tiny", *FAKES, "--set", "job_size=1"]
        argv += ["--executor", kind, "--workers", "2", "--device", "cpu", "--quiet"]
        assert main(argv) == 0
    capsys.readouterr()
    stored = {}
    for kind, path in paths.items():
        with SQLiteStorage(path) as storage:
            stored[kind] = contents(storage)
    assert stored["processes"] == stored["inprocess"]


def test_one_search_at_a_time_per_database(database, capsys):
    before = snapshot(database)
    with open(database, "rb") as handle:
        fcntl = pytest.importorskip("fcntl")
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a running `cellsearch search` holds it
        code, _, err = run_cli(capsys, "search", "--db", str(database), "--quiet")
    assert code == 2 and "another `cellsearch search` or `reproduce` is writing" in err
    assert snapshot(database) == before


@pytest.mark.slow
def test_two_starts_on_one_new_file_one_runs_the_other_is_told(tmp_path):
    """Started at the same moment on a file that does not exist yet: one search runs; the other
    says another is running (never "not a cellsearch database"), or resumes after it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": str(root)}
    for attempt in range(3):
        path = tmp_path / f"race{attempt}.db"
        command = [sys.executable, "-m", "cellsearch", "search", "--db", str(path), "--quiet",
                   "--preset", "tiny", "--set", "evaluation_options.sleep=0.05",
                   *FAKES]
        processes = [subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        outcomes = [(process.wait(timeout=120), process.stderr.read()) for process in processes]
        for code, err in outcomes:
            assert code == 0 or (code == 2 and "is writing" in err), err
        assert any(code == 0 for code, _ in outcomes)


def test_list_settings_names_every_key_and_search_needs_a_db(capsys):
    code, out, _ = run_cli(capsys, "search", "--list-settings")
    assert code == 0
    assert [line.split(" = ")[0] for line in out.splitlines() if not line.startswith(" ")] == list(
        SearchConfig.__dataclass_fields__
    )
    code, out, err = run_cli(capsys, "search", "--preset", "tiny")
    assert code == 2 and "search needs --db FILE" in err


def test_stats_reports_throughput_from_the_stored_timestamps(database, capsys):
    # Rewrite the stamps: 30 minutes from the first evaluation to the last.
    connection = sqlite3.connect(database)
    ids = [row[0] for row in connection.execute("SELECT id FROM evaluations ORDER BY id")]
    connection.execute("UPDATE evaluations SET created_at = '2026-12-07T10:00:00.000+00:00'")
    connection.execute("UPDATE evaluations SET created_at = '2026-12-07T10:30:00.000+00:00'"
                       " WHERE id = ?", (ids[-1],))
    connection.execute("UPDATE evaluations SET tokens = 700")  # (the fake trainer reads none)
    tokens = 700 * len(ids)
    connection.commit()
    connection.close()
    _, out, _ = run_cli(capsys, "stats", "--db", str(database), "--json")
    figures = json.loads(out)
    assert figures["hours"] == 0.5
    assert figures["evaluations_per_hour"] == pytest.approx(len(ids) * 2)
    assert figures["tokens_per_second"] == pytest.approx(tokens / 1800)
    _, out, _ = run_cli(capsys, "stats", "--db", str(database))
    assert "30.0 min" in out and f"{len(ids) * 2}" in out


def test_the_progress_line_shows_the_share_of_the_benchs_one_cell_figure(tmp_path, capsys,
                                                                         monkeypatch):
    from cellsearch.train import reference

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "search.db"
    argv = ["search", "--db", str(path), "--preset", "tiny", "--set", "max_steps=1",
            "--device", "cpu"]
    _, _, err = run_cli(capsys, *argv)
    assert "settings/h" in err and "of bench" not in err  # no figure kept on this machine yet
    reference.save("cpu", "arith", {"tokens_per_second": 1e3, "population": 128})
    _, _, err = run_cli(capsys, *argv, "--set", "max_steps=2")
    share = re.search(r"([\d,.]+)M tokens/s \(([\d,]+)% of bench K=128\)", err)
    assert share, err
    # The share's tokens/s (the bench's 1e3 times it) rounds to the figure shown, to 0.01M.
    implied = float(share[2].replace(",", "")) / 100 * 1e3
    assert abs(implied / 1e6 - float(share[1])) <= 0.005 + 1e-5


def test_the_mixed_executor_trains_a_search_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "mixed.db"
    code, out, err = run_cli(capsys, "search", "--db", str(path), "--preset", "tiny",
                             "--set", "max_steps=1", "--executor", "mixed", "--device", "cpu")
    assert code == 0 and "evaluations stored" in out
    assert "note: the mixed engine is made for GPUs" in err  # on a CPU, it says so
    with SQLiteStorage(path) as storage:
        evaluations = storage.get_evaluations(1)
    assert evaluations and all(e.result.ok for e in evaluations)
    mixing = re.search(r"mixed engine: (\d+) shared steps made, run ([\d,]+) times, (\d+)% past "
                       r"their warmup, ([\d.]+) populations each", out)
    assert mixing and 0 < int(mixing[1]) <= int(mixing[2].replace(",", ""))
    assert float(mixing[4]) >= 1


def test_the_default_executor_on_a_gpu_points_to_the_mixed_one(tmp_path, capsys, monkeypatch):
    from cellsearch.cli import search as search_cli

    argv = ["search", "--preset", "tiny", *FAKES, "--set", "max_steps=0", "--device", "cpu"]
    code, _, err = run_cli(capsys, *argv, "--db", str(tmp_path / "cpu.db"))
    assert code == 0 and "note:" not in err
    monkeypatch.setattr(search_cli, "_device_kind", lambda device: "cuda")
    code, _, err = run_cli(capsys, *argv, "--db", str(tmp_path / "gpu.db"))
    assert code == 0 and "leaves a GPU mostly idle; --executor mixed" in err
    code, _, err = run_cli(capsys, *argv, "--db", str(tmp_path / "chosen.db"),
                           "--executor", "inprocess")
    assert code == 0 and "note:" not in err  # (chosen, not defaulted to)


@pytest.mark.slow
def test_dask_workers_train_jobs_together_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    saved = dict(os.environ)  # a Dask nanny sets OMP_NUM_THREADS and friends in this process
    path = tmp_path / "together.db"
    try:
        code, out, _ = run_cli(capsys, "search", "--db", str(path), "--preset", "tiny", "--set",
                               "max_steps=1", "--executor", "dask-local", "--workers", "1",
                               "--jobs-per-worker", "6", "--device", "cpu", "--quiet")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert code == 0 and "evaluations stored" in out
    together = re.search(r"jobs trained together on each worker:\n  tcp://\S+: (\d+) jobs, "
                         r"up to (\d+) at once", out)
    assert together and int(together[1]) >= int(together[2]) > 1


@pytest.mark.parametrize("executor", ["inprocess", "mixed", "processes"])
def test_jobs_per_worker_is_for_dask_only(tmp_path, capsys, executor):
    code, out, err = run_cli(capsys, "search", "--db", str(tmp_path / "x.db"), "--preset", "tiny",
                             "--executor", executor, "--jobs-per-worker", "4")
    assert code == 2 and out == "" and "--jobs-per-worker is for --executor dask" in err
    code, _, err = run_cli(capsys, "search", "--db", str(tmp_path / "x.db"), "--preset", "tiny",
                           "--executor", "dask-local", "--jobs-per-worker", "0")
    assert code == 2 and "--jobs-per-worker must be at least 1, got 0" in err
    assert not (tmp_path / "x.db").exists()


def test_a_local_dask_search_on_gpus_compares_with_the_bench_on_each_gpu(monkeypatch):
    import argparse

    from cellsearch.cli import search as search_cli
    from cellsearch.train import reference

    reference.save("cuda", "arith", {"tokens_per_second": 1e7, "population": 128})
    monkeypatch.setattr(search_cli, "on_gpu", lambda device: device != "cpu")
    monkeypatch.setattr("cellsearch.executors.dask.visible_gpus", lambda: ["0", "1", "2"])

    def figure(executor, workers=None, device="auto"):
        args = argparse.Namespace(quiet=False, executor=executor, workers=workers, device=device)
        return search_cli._bench_reference(args)

    assert figure("dask-local")["tokens_per_second"] == 3e7 and figure("dask-local")["gpus"] == 3
    assert figure("dask-local", workers=2)["gpus"] == 2  # (and 8 workers still share 3 GPUs)
    assert figure("dask-local", workers=8)["gpus"] == 3
    assert figure("mixed")["tokens_per_second"] == 1e7 and "gpus" not in figure("mixed")
    assert figure("dask") is None and figure("dask-local", device="cpu") is None
