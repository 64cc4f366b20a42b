import json

import pytest

from cellsearch.cli import main

TINY = ["--task", "memorize", "--max-epochs", "1", "--epoch-windows", "2",
        "--set", "num_parameters=2000", "--device", "cpu"]


def strict_json(text: str):
    """json.loads refusing NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_one_object_per_trial(capsys):
    assert main(["evaluate", "--cell", "gru", "--trials", "2", "--json", *TINY]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    records = [strict_json(line) for line in lines]
    for record in records:
        assert record["cell"] == "gru" and record["task"] == "memorize"
        assert record["metric"] == "accuracy" and 0 <= record["value"] <= 1
        assert record["parameter_count"] <= 2000 and record["hidden_size"] > 0
        assert record["status"] == "ok" and record["epochs"] == 1
        assert record["hyperparameters"]["num_parameters"] == 2000
        assert "perplexity" in record["test"]
        (epoch,) = record["history"]  # the learning curve: one entry per epoch trained
        assert epoch["epoch"] == 1 and epoch["learning_rate"] == record["hyperparameters"][
            "learning_rate"] and epoch["accuracy"] == record["value"]
    assert records[0]["hyperparameters"] != records[1]["hyperparameters"]


def test_evaluate_plot_writes_learning_curves(tmp_path, capsys):
    assert main(["evaluate", "--cell", "gru", "--trials", "2", "--plot", str(tmp_path), *TINY]) == 0
    assert (tmp_path / "gru-memorize.png").stat().st_size > 5000
    assert f"wrote {tmp_path / 'gru-memorize.png'}" in capsys.readouterr().err


def test_a_diverged_trial_is_strict_json_with_nulls():
    from cellsearch.cli.evaluate import result_record
    from cellsearch.evaluation.result import DIVERGED, Result
    from cellsearch.evaluation.settings import SearchSpace

    settings = next(iter(SearchSpace.for_task("memorize").grid()))
    diverged = Result(task="memorize", settings=settings, hidden_size=8, num_parameters=2000,
                      metric="accuracy", status=DIVERGED, reason="the training loss became NaN",
                      valid={"accuracy": float("nan"), "nll": float("inf")}, test={})
    record = strict_json(json.dumps(result_record("gru", diverged)))
    assert record["value"] is None and record["valid"] == {"accuracy": None, "nll": None}
    assert record["status"] == "diverged" and "NaN" in record["reason"]


def test_evaluate_set_pins_a_setting_and_prints_a_table(capsys):
    assert main(["evaluate", "--cell", "lstm-b", *TINY, "--set", "learning_rate=0.5",
                 "--set", "init_scale=0.7", "--set", "max_grad_norm=5", "--set",
                 "num_layers=2"]) == 0
    out = capsys.readouterr().out
    assert "lstm-b on memorize" in out and "0.5" in out
    # Captured output is not a terminal, as a log or a pipe: every column whole, nothing cut.
    header, row = out.splitlines()[1:3]
    assert "…" not in out and header.split()[:3] == ["lr", "init", "clip"]
    assert "test perplexity" in header and row.split()[:4] == ["0.5", "0.7", "5", "2"]
    assert row.split()[-1] == "ok"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "learning_rate=0.15"], "learning_rate=0.15 is outside"),
        (["--set", "momentum=0.9"], "unknown hyperparameter 'momentum'"),
        (["--task", "chess"], "unknown task 'chess'"),
        (["--cell", "nope"], "unknown cell 'nope'"),
    ],
)
def test_evaluate_bad_input_is_one_line_exit_2(capsys, extra, message):
    args = ["evaluate", "--cell", "gru", *TINY, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_failed_trial_is_shown_and_said_and_exits_1(monkeypatch, capsys):
    from dataclasses import replace

    from cellsearch.train import evaluate

    real = evaluate.evaluate

    def second_fails(graph, task, settings, **options):
        results = real(graph, task, settings, **options)
        return [results[0], replace(results[1], status="failed", valid={},
                                    reason="OutOfMemoryError: CUDA out of memory")]

    monkeypatch.setattr(evaluate, "evaluate", second_fails)
    assert main(["evaluate", "--cell", "gru", "--trials", "2", *TINY]) == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out and "ok" in captured.out  # both in the table
    assert "1 of the 2 trials failed:\n  1 x OutOfMemoryError: CUDA out of memory" in captured.err
