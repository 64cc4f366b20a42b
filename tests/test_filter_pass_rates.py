"""benchmarks/filter_pass_rates.py, issue 23's table of how often cells pass the memorization
filter: every setting recorded as it is trained, a second call resumes, the tables list failures."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "filter_pass_rates.py"


def rates(out, *arguments):
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *arguments],
                          capture_output=True, text=True, check=True).stdout


def test_each_setting_is_recorded_a_second_call_trains_nothing_and_failures_are_listed(tmp_path):
    out = tmp_path / "rates.jsonl"
    tiny = ["--cells", "gru", "--settings", "2", "--max-epochs", "1", "--epoch-windows", "2",
            "--device", "cpu"]
    printed = rates(out, *tiny)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["loss_normalization"] for r in records) == ["minibatch"] * 2 + ["targets"] * 2
    assert {r["device"] for r in records} == {"cpu"}
    assert len({r["settings_key"] for r in records}) == 2
    assert not any(r["passed"] for r in records)  # (one epoch of two windows)
    assert all(len(r["history"]) == r["epochs"] == 1 for r in records)
    assert "### gru, loss / minibatch: 0/2 pass (cpu)" in printed
    assert "| learning_rate | " in printed and "Failed (num_layers" in printed
    assert "| layers \\ init |" in printed

    assert rates(out, *tiny, "--tables") == printed  # trains nothing, prints the same
    rates(out, *tiny)
    assert len(out.read_text().splitlines()) == 4  # resumed: nothing trained again


def test_worker_processes_train_the_same_settings_to_the_same_outcomes(tmp_path):
    tiny = ["--cells", "gru", "--settings", "2", "--max-epochs", "1", "--epoch-windows", "2",
            "--device", "cpu", "--chunk", "1"]
    rates(tmp_path / "alone.jsonl", *tiny)
    rates(tmp_path / "workers.jsonl", *tiny, "--executor", "processes", "--workers", "2")

    def outcomes(name):
        records = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        return {(r["loss_normalization"], r["settings_key"]): r for r in records}

    alone, workers = outcomes("alone.jsonl"), outcomes("workers.jsonl")
    assert alone.keys() == workers.keys() and len(alone) == 4  # each chunk recorded once
    for key, record in alone.items():
        assert workers[key]["epochs"] == record["epochs"]
        assert abs(workers[key]["value"] - record["value"]) < 1e-3  # (thread counts differ)
