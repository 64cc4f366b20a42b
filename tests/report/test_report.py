"""`cellsearch reproduce` and `cellsearch report`: which settings a table trains, resuming, and the
report's numbers recomputed independently from the stored evaluations. Cheap fake trainers; the
end-to-end test trains real tiny models."""

from __future__ import annotations

import json
import math
from typing import Sequence

import pytest

from cellsearch.cells import zoo
from cellsearch.cells.graph import CellGraph
from cellsearch.cli import main
from cellsearch.evaluation.result import Result
from cellsearch.evaluation.settings import Settings
from cellsearch.executors import InProcessExecutor
from cellsearch.report.paper import TABLES
from cellsearch.report.reproduce import Reproduction, run_reproduction
from cellsearch.report.tables import build_report, report_dict
from cellsearch.storage import InMemoryStorage
from tests.search.fake import unit
from tests.search.test_driver import search

CELLS = ("lstm", "gru", "mut1")


def fake_evaluate(
    graph: CellGraph, task: str, settings: Sequence[Settings], **options
) -> list[Result]:
    """Accuracy for the character tasks, nll for music and PTB's schedule, from (cell, task,
    settings); one run in ten has no score."""
    architecture = graph.canonical_hash()
    results = []
    for item in settings:
        draw = unit(architecture, task, item.key())
        metric = "nll" if options.get("schedule") in ("music", "ptb") else "accuracy"
        value = math.nan if draw < 0.1 else (3 + draw if metric == "nll" else draw)
        results.append(
            Result(task=task, settings=item, hidden_size=8, num_parameters=item.num_parameters,
                   metric=metric, valid={metric: value}, test={metric: value + 0.01},
                   epochs=1, wall_seconds=0.0)
        )
    return results


REPRODUCTION = Reproduction(evaluator="tests.report.test_report:fake_evaluate")


def reproduce(storage, table, count, **kwargs):
    """(settings trained now, stored before), none of them failed."""
    trained, before, failed = run_reproduction(
        storage, InProcessExecutor(), table, REPRODUCTION, count=count, cells=CELLS, **kwargs
    )
    assert failed == []
    return trained, before


def failing_evaluate(graph: CellGraph, task: str, settings: Sequence[Settings], **options):
    """`fake_evaluate`, but the GRU's runs fail as a worker out of memory does (and the LSTM's
    diverge)."""
    results = fake_evaluate(graph, task, settings, **options)
    name = {zoo.get(n).canonical_hash(): n for n in CELLS}[graph.canonical_hash()]
    status = {"gru": "failed", "lstm": "diverged"}.get(name)
    if status is None:
        return results
    return [Result(**{**vars(r), "status": status, "reason": f"{status}: by the test"})
            for r in results]


def test_a_failed_run_is_not_stored_and_the_next_run_trains_it_again():
    storage = InMemoryStorage()
    flaky = Reproduction(evaluator="tests.report.test_report:failing_evaluate")
    trained, before, failed = run_reproduction(storage, InProcessExecutor(), 1, flaky, count=2,
                                               cells=CELLS, columns=("Arith.",))
    assert (trained, before) == (6, 0) and len(failed) == 2  # the GRU's 2 settings
    assert {r.reason for r in failed} == {"failed: by the test"}
    stored = storage.get_evaluations(1)
    assert len(stored) == 4 and {e.result.status for e in stored} == {"ok", "diverged"}
    trained, before, failed = run_reproduction(storage, InProcessExecutor(), 1, flaky, count=2,
                                               cells=CELLS, columns=("Arith.",))
    assert (trained, before, len(failed)) == (2, 4, 2)  # only the GRU's, again


def test_every_cell_is_trained_on_the_same_settings_and_a_rerun_trains_nothing():
    storage = InMemoryStorage()
    assert reproduce(storage, 1, 3) == (3 * 3 * 3, 0)  # 3 cells x 3 columns x 3 settings
    evaluations = storage.get_evaluations(1)
    for task in ("arith", "xml", "ptb"):
        keys = {
            cell: {e.settings_key for e in evaluations
                   if e.task == task and e.architecture_hash == zoo.get(cell).canonical_hash()}
            for cell in CELLS
        }
        assert len(keys["lstm"]) == 3 and keys["lstm"] == keys["gru"] == keys["mut1"]
    assert all(e.step == 1 and e.result.settings.dropout == 0 for e in evaluations)
    assert reproduce(storage, 1, 3) == (0, 27)
    assert reproduce(storage, 1, 5) == (18, 27)  # the first 3 of 5 are the same draws


def test_table_2_splits_nottingham_by_dropout():
    storage = InMemoryStorage()
    reproduce(storage, 2, 4)
    report = build_report(storage, 1)
    (table,) = report.tables
    assert table.table.number == 2 and [row.label for row in table.rows] == list(CELLS)
    evaluations = storage.get_evaluations(1)
    for row in table.rows:
        for column, entry in zip(table.table.columns, row.entries):
            counted = [
                e for e in evaluations
                if e.architecture_hash == row.architecture_hash and e.task == column.task
                and (e.result.settings.dropout > 0) == (column.name == "N-dropout")
            ]
            assert entry.settings == len(counted) == 4
            scored = [e for e in counted if math.isfinite(e.result.valid["nll"])]
            best = min(scored, key=lambda e: e.result.valid["nll"])  # lower nll is better
            assert entry.value == best.result.test["nll"]  # the test nll of the best-valid run
            assert entry.paper == TABLES[2].paper[row.label][table.table.columns.index(column)]


def test_a_reproduction_refuses_other_options_once_it_has_results():
    from cellsearch.errors import UserError

    storage = InMemoryStorage()
    reproduce(storage, 1, 1)
    with pytest.raises(UserError, match=r"seed: stored 0, given 1;.*not be comparable"):
        run_reproduction(storage, InProcessExecutor(), 1, Reproduction(seed=1), count=1)


def test_a_search_report_has_its_funnel_statistics_and_correlations():
    storage = InMemoryStorage()
    search(storage)
    data = report_dict(build_report(storage, 1))
    assert data["kind"] == "search"
    funnel = data["funnel"]
    statistics = data["statistics"]
    assert funnel["passed_filter"] == statistics["passed_filter"]
    assert funnel["failed_filter"] + funnel["passed_filter"] <= funnel["proposed"]
    passed = [count for _, count in funnel["passed_tasks"]]
    assert passed == sorted(passed, reverse=True) and passed[0] <= funnel["passed_filter"]
    assert {tuple(pair["tasks"]) for pair in data["correlations"]} == {
        ("arith", "xml"), ("arith", "ptb"), ("xml", "ptb")}
    (table,) = data["tables"]
    labels = [row["label"] for row in table["rows"]]
    assert labels[:2] == ["lstm", "gru"] and len(labels) >= 3


def test_reproduce_and_report_end_to_end(tmp_path, capsys):
    """Real training at tiny sizes, through the CLI: reproduce, resume, report in three formats
    and plots; and the two kinds of database are not mixed up."""
    db = str(tmp_path / "table1.db")
    tiny = ["--set", "max_epochs=1", "--set", "epoch_windows=5", "--set", "valid_samples=50",
            "--set", "test_samples=50", "--set", "space.num_parameters=[3000]",
            "--set", "space.num_layers=[1]"]
    command = ["reproduce", "--db", db, "--table", "1", "--settings", "2", "--cells",
               "lstm,gru", "--columns", "Arith.,XML", "--device", "cpu", "--quiet", *tiny]
    assert main(command) == 0
    assert "8 settings trained now, 0 stored before" in capsys.readouterr().out
    assert main(command) == 0
    assert "0 settings trained now, 8 stored before" in capsys.readouterr().out

    assert main(["report", "--db", db, "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "(0.89228)" in text and "[2]" in text
    assert (tmp_path / "plots" / "table-1.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "curves-table-1.png").stat().st_size > 1000
    assert main(["report", "--db", db, "--format", "markdown"]) == 0
    assert "| lstm | " in capsys.readouterr().out
    assert main(["report", "--db", db, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in data["tables"][0]["rows"]] == ["lstm", "gru"]

    assert main(["search", "--db", db, "--preset", "tiny"]) == 2
    assert "holds a reproduction" in capsys.readouterr().err
    assert main(["top", "--db", db]) == 2
    assert "cellsearch report" in capsys.readouterr().err
    searched = str(tmp_path / "search.db")
    assert main(["search", "--db", searched, "--preset", "tiny", "--set", "max_steps=1",
                 "--quiet"]) == 0
    assert main([*command[:2], searched, *command[3:]]) == 2
    assert "holds a search" in capsys.readouterr().err


def test_reproduce_refuses_a_database_another_process_writes(tmp_path, capsys):
    from cellsearch.storage import open_storage

    db = str(tmp_path / "table1.db")
    holder = open_storage(db, sole_writer=True)  # as a running search or reproduce holds it
    try:
        code = main(["reproduce", "--db", db, "--table", "1", "--settings", "1", "--cells", "gru",
                     "--columns", "Arith.", "--device", "cpu", "--quiet"])
        assert code == 2 and "is writing" in capsys.readouterr().err
    finally:
        holder.close()


def test_reproduce_checks_the_device_and_data_before_writing_and_says_what_failed(
        tmp_path, capsys):
    db = tmp_path / "table1.db"
    base = ["reproduce", "--db", str(db), "--table", "1", "--settings", "1", "--cells",
            "lstm,gru", "--columns", "Arith.", "--quiet"]
    assert main([*base, "--device", "abacus"]) == 2
    assert "unknown device 'abacus'" in capsys.readouterr().err and not db.exists()

    evaluator = ["--evaluator", "tests.report.test_report:failing_evaluate", "--device", "cpu"]
    assert main([*base, *evaluator]) == 1
    captured = capsys.readouterr()
    assert "2 settings trained now" in captured.out
    assert "1 of the 2 settings failed; failed runs are not stored" in captured.err
    assert "1 x failed: by the test" in captured.err
