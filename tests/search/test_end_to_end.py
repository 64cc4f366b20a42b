"""A real search on this CPU: the tiny preset with the real trainer (cellsearch.train.evaluate),
started, resumed with a larger budget, and reported by `top` and `stats`."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from cellsearch.cli import main

pytest.importorskip("cellsearch.train.evaluate")

CHEAPER = ["--set", "initial_settings=1", "--set", "settings_per_task=1"]


@pytest.mark.slow
def test_a_tiny_real_search_runs_resumes_and_reports(tmp_path, capsys):
    path = tmp_path / "search.db"
    base = ["search", "--db", str(path), "--preset", "tiny", "--device", "cpu", "--quiet", *CHEAPER]
    assert main([*base, "--set", "max_steps=1"]) == 0
    assert "last completed step 1" in capsys.readouterr().out
    assert main([*base, "--set", "max_steps=2"]) == 0
    assert "1 step run now, last completed step 2" in capsys.readouterr().out

    connection = sqlite3.connect(path)
    rows = connection.execute(
        "SELECT task, status, value, device, wall_seconds FROM evaluations"
    ).fetchall()
    steps = connection.execute("SELECT step FROM steps ORDER BY step").fetchall()
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
    assert steps == [(0,), (1,), (2,)]
    assert len(rows) >= 4 and all(device == "cpu" and seconds > 0 for *_, device, seconds in rows)
    assert any(
        status == "ok" and 0 < value <= 1 for _, status, value, *_ in rows
    )  # real accuracies

    assert main(["top", "--db", str(path), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)
    assert (
        top[0]["fitness"] == pytest.approx(1.0) or top[0]["fitness"] > 1.0
    )  # GRU is 1 by definition
    assert {"arith", "xml"} == set(top[0]["ratios"])
    assert re.search(r"^h'\s+= ", top[0]["equations"], re.M)

    assert main(["stats", "--db", str(path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["total_evaluations"] == len(rows) and figures["steps_completed"] == 3
