"""Wall time of a whole `cellsearch search` with 1 and with 2 worker processes (issue 22's CPU
target: `--executor processes --workers 2` finishes a tiny search of 12 steps >= 1.5x faster than
`--workers 1`).

Runs the command as a user would, alternating the worker counts so that both meet the same
machine noise, and reports per run the command's wall time and the search's own span (the run's
creation to its last stored step, from the database's timestamps), then the medians and ratios.

    python benchmarks/search_workers.py [--repeats 3] [--steps 12] [--preset tiny]
"""

import argparse
import datetime
import json
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def span(path: Path) -> float:
    """Seconds from the run's creation to its last completed step."""
    connection = sqlite3.connect(path)
    try:
        created = connection.execute("SELECT MIN(created_at) FROM runs").fetchone()[0]
        last = connection.execute("SELECT MAX(completed_at) FROM steps").fetchone()[0]
    finally:
        connection.close()
    parse = datetime.datetime.fromisoformat
    return (parse(last) - parse(created)).total_seconds()


def run(workers: int, steps: int, preset: str, folder: Path) -> dict:
    path = folder / f"search-{workers}-{time.monotonic_ns()}.db"
    command = [sys.executable, "-m", "cellsearch", "search", "--db", str(path), "--preset", preset,
               "--set", f"max_steps={steps}", "--executor", "processes", "--workers", str(workers),
               "--device", "cpu", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return {"workers": workers, "wall_seconds": time.perf_counter() - start,
            "search_seconds": span(path)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    import torch

    print(f"# {datetime.date.today()}, {platform.processor() or platform.machine()},"
          f" Python {platform.python_version()}, torch {torch.__version__}")
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for workers in (1, 2):
                runs[workers].append(run(workers, args.steps, args.preset, Path(folder)))
                print(json.dumps(runs[workers][-1]), flush=True)
    medians = {workers: {key: statistics.median(r[key] for r in items)
                         for key in ("wall_seconds", "search_seconds")}
               for workers, items in runs.items()}
    print(json.dumps({"median": medians,
                      "speedup_wall": round(medians[1]["wall_seconds"] / medians[2]["wall_seconds"], 2),
                      "speedup_search": round(medians[1]["search_seconds"]
                                              / medians[2]["search_seconds"], 2)}))


if __name__ == "__main__":
    main()
