import json

import pytest

from cellsearch.cli import main

TINY = ["bench", "--task", "memorize", "--device", "cpu", "--populations", "1,2",
        "--repeats", "1"]


def test_bench_json_measures_cudnn_populations_compared_engines_and_a_mutant(capsys):
    assert main([*TINY, "--compare", "eager", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "memorize" and report["device"] == "cpu"
    rows = [(r["engine"], r["population"]) for r in report["throughput"]]
    assert rows == [("torch.nn.LSTM", 1), ("cellsearch lstm (eager)", 1),
                    ("cellsearch lstm (eager)", 2), ("cellsearch lstm (eager)", 1),
                    ("cellsearch lstm (eager)", 2), ("cellsearch mutated gru (eager)", 1)]
    for row in report["throughput"]:
        assert row["tokens_per_second"] > 0 and row["hidden_size"] > 0
    cudnn = report["throughput"][0]
    assert cudnn["ratio_to_cudnn"] == 1.0
    # tokens/s over cuDNN's: the ratio column is consistent with the rates
    eager = report["throughput"][2]
    assert eager["ratio_to_cudnn"] == pytest.approx(
        eager["tokens_per_second"] / cudnn["tokens_per_second"])
    assert report["search_costs"] is None


def test_bench_prints_a_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps long engine names at 80
    assert main(TINY) == 0
    out = capsys.readouterr().out
    assert "torch.nn.LSTM" in out and "cellsearch lstm (eager)" in out and "× cuDNN" in out


@pytest.mark.parametrize("extra, message", [
    (["--compare", "turbo"], "unknown engine 'turbo'"),
    (["--populations", "1,x"], "--populations expects integers"),
    (["--repeats", "0"], "at least 1"),
])
def test_bench_bad_options_exit_2(capsys, extra, message):
    assert main([*TINY, *extra]) == 2
    assert message in capsys.readouterr().err


def test_bench_mixed_trains_different_cells_together_beside_one_cell(capsys):
    assert main(["bench", "--mixed", "2", "--windows", "2", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["mixed"]
    assert [(row["what"], row["cells"], row["K"]) for row in rows] == [
        ("one cell", 1, 4), ("different cells together", 2, 4), ("one cell, every member", 1, 8),
        ("different cells, mixed engine", 2, 4)]
    # every member trains one epoch of 2 windows of 20 x 35 tokens
    assert [row["tokens"] for row in rows] == [4 * 1400, 8 * 1400, 8 * 1400, 8 * 1400]
    assert all(row["tokens_per_second"] > 0 for row in rows)


def test_bench_keeps_its_best_one_cell_figure_for_the_searchs_progress_line(capsys):
    from cellsearch.train import reference

    assert main([*TINY, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["throughput"]
    ours = [row for row in rows if row["engine"].startswith("cellsearch ")]
    best = max(ours, key=lambda row: row["tokens_per_second"])
    kept = reference.load("cpu", "memorize")
    assert kept["tokens_per_second"] == best["tokens_per_second"]
    assert kept["population"] == best["population"] and kept["device"] == "cpu"
    assert reference.load("cuda", "memorize") is None  # kept per device kind
