"""benchmarks/gpu_campaign.py, the one call a GPU session makes: on a CPU with --quick, a part
runs and records its figures with the machine's facts, a done part is skipped by the next call,
and a part that does not fit the budget waits for it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CAMPAIGN = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_campaign.py"


def campaign(out, *arguments):
    return subprocess.run([sys.executable, str(CAMPAIGN), "--out", str(out), "--device", "cpu",
                           *arguments], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
def test_a_search_part_measures_its_throughput_and_a_second_call_skips_it(tmp_path):
    out = campaign(tmp_path, "--quick", "--parts", "search-inprocess")
    record = json.loads((tmp_path / "search-inprocess.json").read_text())
    assert record["evaluations"] > 0 and record["evaluations_per_hour"] > 0
    assert record["by_task"]["memorize"] > 0 and record["device"] == "cpu" and record["torch"]
    assert (tmp_path / "search-inprocess.db").exists() and "running" in out
    again = campaign(tmp_path, "--quick", "--parts", "search-inprocess")
    assert "done in an earlier call" in again


def test_a_part_that_does_not_fit_the_budget_waits_for_the_next_call(tmp_path):
    out = campaign(tmp_path, "--minutes", "1", "--parts", "search-inprocess,bench-layout")
    assert "search-inprocess: needs ~9 min" in out and "next call" in out
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_the_scaling_run_kills_a_worker_halfway_and_loses_and_repeats_nothing(tmp_path):
    campaign(tmp_path, "--quick", "--parts", "scaling")  # (CPU workers stand in for GPUs)
    record = json.loads((tmp_path / "scaling.json").read_text())
    one, two = record["runs"]["1"], record["runs"]["2"]
    assert one["killed_worker"] == [] and len(two["killed_worker"]) == 1
    assert two["evaluations_after_kill"] > 0  # the search went on without it
    for run in (one, two):
        assert run["evaluations"] > 0 and run["integrity_check"] == "ok"
        assert run["repeated_evaluations"] == 0
    assert record["ratio_to_one_gpu"]["1"] == 1.0


@pytest.mark.slow
def test_the_wider_search_part_runs_with_64_steps_in_flight(tmp_path):
    import sqlite3

    campaign(tmp_path, "--quick", "--parts", "search-mixed-64")
    record = json.loads((tmp_path / "search-mixed-64.json").read_text())
    assert record["executor"] == "mixed" and record["steps_in_flight"] == 64
    assert "failed" in record  # counted by reason
    with sqlite3.connect(tmp_path / "search-mixed-64.db") as database:
        stored = json.loads(database.execute("SELECT config FROM runs").fetchone()[0])
    assert stored["steps_in_flight"] == 64


def test_the_command_without_the_grouped_kernels_runs_the_cli_with_the_mixed_steps_own():
    sys.path.insert(0, str(CAMPAIGN.parent))
    try:
        import gpu_campaign
    finally:
        sys.path.remove(str(CAMPAIGN.parent))
    setup = "".join(gpu_campaign.WITHOUT.values())
    probe = subprocess.run(
        [sys.executable, "-c", setup + "print(steps._grouped_usable('cuda'), "
                                       "mixed._products_usable('cuda'))"],
        capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False False"
    listed = gpu_campaign.cellsearch("cells", "list", without=tuple(gpu_campaign.WITHOUT),
                                     check=True)
    assert listed.stdout == gpu_campaign.cellsearch("cells", "list", check=True).stdout
    assert "lstm" in listed.stdout


def test_a_part_that_fails_says_why_and_the_call_goes_on(tmp_path):
    broken = tmp_path / "src" / "cellsearch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "__main__.py").write_text("raise SystemExit('a baseline that does not run')")
    out = campaign(tmp_path, "--quick", "--parts", "bench-layout,gpu-tests",
                   "--baseline-src", str(broken.parent))
    assert "bench-layout: failed" in out and "going on" in out
    why = (tmp_path / "bench-layout.failed.txt").read_text()
    assert "CalledProcessError" in why and "a baseline that does not run" in why
    assert not (tmp_path / "bench-layout.json").exists()  # the next call tries it again
    assert (tmp_path / "gpu-tests.json").exists()


def test_a_baseline_without_the_package_is_refused(tmp_path):
    refused = subprocess.run([sys.executable, str(CAMPAIGN), "--out", str(tmp_path),
                              "--baseline-src", str(tmp_path)], capture_output=True, text=True,
                             check=False)
    assert refused.returncode == 2 and "holds no cellsearch package" in refused.stderr


def test_the_search_parts_use_the_window_kernels_that_trained_faster(tmp_path):
    sys.path.insert(0, str(CAMPAIGN.parent))
    try:
        import gpu_campaign
    finally:
        sys.path.remove(str(CAMPAIGN.parent))
    assert gpu_campaign.window_kernel(tmp_path) == "triton"  # (no bench figures yet)

    def bench(speed):
        return {"mixed": [{"what": "one cell", "tokens_per_second": 1e9},
                          {"what": "different cells, mixed engine", "tokens_per_second": speed}]}

    for persistent, chosen in ((2e6, "persistent"), (5e5, "triton")):
        (tmp_path / "bench-mixed.json").write_text(json.dumps({"bench": {
            "connections_32": bench(1e6), "connections_32_persistent": bench(persistent)}}))
        assert gpu_campaign.window_kernel(tmp_path) == chosen


@pytest.mark.slow
def test_a_table_part_reproduces_and_reports_what_is_stored(tmp_path):
    out = campaign(tmp_path, "--quick", "--parts", "table-1")
    record = json.loads((tmp_path / "table-1.json").read_text())
    assert record["settings_stored"] == 2 and "table-1: running" in out  # lstm and gru
    report = (tmp_path / "table-1.md").read_text()
    assert "## Table 1" in report and "| lstm | " in report and "(0.89228) [1]" in report
    assert (tmp_path / "table-1-plots" / "table-1.png").stat().st_size > 1000


def test_a_table_part_whose_reproduction_fails_says_why(tmp_path):
    out = campaign(tmp_path, "--quick", "--parts", "table-1", "--device", "cuda")  # (no GPU)
    assert "table-1: failed" in out and not (tmp_path / "table-1.json").exists()
    why = (tmp_path / "table-1.failed.txt").read_text()
    assert "reproduce failed (exit 2)" in why and "GPU" in why


def test_a_command_that_outlasts_its_minutes_is_stopped_as_ctrl_c_stops_it():
    sys.path.insert(0, str(CAMPAIGN.parent))
    try:
        import gpu_campaign
    finally:
        sys.path.remove(str(CAMPAIGN.parent))
    waits = ("import sys, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
             "    print('stopped cleanly'); sys.exit(130)")
    code, tail = gpu_campaign.timed([sys.executable, "-c", waits], minutes=0.05, poll=0.1)
    assert code == gpu_campaign.INTERRUPTED and "stopped cleanly" in tail
    code, tail = gpu_campaign.timed([sys.executable, "-c", "print('done')"], minutes=1, poll=0.1)
    assert code == 0 and "done" in tail
