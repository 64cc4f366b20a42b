"""Aggregate evaluation rate of a local Dask cluster with 1 and with 2 GPU workers (issue 7).

The same batch of identical population jobs (LSTM on arith, K settings each) runs through
`DaskExecutor` with one worker (GPU 0), then with two (one per GPU); prints jobs per minute.

    python benchmarks/dask_scaling.py [--jobs 8] [--settings 8] [--epoch-windows 200]
"""

import argparse
import datetime
import json
import subprocess
import threading
import time

from cellsearch.cells import zoo
from cellsearch.evaluation.settings import Settings
from cellsearch.executors import EvaluationJob
from cellsearch.executors.dask import DaskExecutor


def jobs(count: int, settings: int, epoch_windows: int) -> list[EvaluationJob]:
    graph = zoo.get("lstm")
    return [
        EvaluationJob(
            architecture_hash=graph.canonical_hash(), graph_json=graph.to_json(), task="arith",
            settings=tuple(Settings(init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0,
                                    num_layers=1, num_parameters=250_000, seed=j * 100 + k)
                           for k in range(settings)),
            options={"max_epochs": 2, "epoch_windows": epoch_windows},
        )
        for j in range(count)
    ]


def utilization(samples: list, stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True)
        samples.append(out.stdout.strip().replace("\n", "; "))
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--settings", type=int, default=8)
    parser.add_argument("--epoch-windows", type=int, default=200)
    args = parser.parse_args()
    print(f"# {datetime.date.today()}: {args.jobs} jobs x {args.settings} settings (LSTM, arith, "
          f"250K, 2 epochs of {args.epoch_windows} windows)")
    for workers in (1, 2):
        batch = jobs(args.jobs, args.settings, args.epoch_windows)
        with DaskExecutor(None, workers=workers, device="cuda") as executor:
            warmup = [executor.submit(job) for job in batch[:workers]]  # start every worker
            for future in executor.as_completed(warmup):
                future.result()
            samples, stop = [], threading.Event()
            watcher = threading.Thread(target=utilization, args=(samples, stop), daemon=True)
            watcher.start()
            start = time.perf_counter()
            futures = [executor.submit(job) for job in batch]
            results = [future.result() for future in executor.as_completed(futures)]
            wall = time.perf_counter() - start
            stop.set()
        ok = sum(r.ok for job_results in results for r in job_results)
        print(json.dumps({"workers": workers, "wall_seconds": round(wall, 1),
                          "jobs_per_minute": round(len(batch) * 60 / wall, 2),
                          "settings_ok": ok, "gpu_utilization_samples": samples[-5:]}), flush=True)


if __name__ == "__main__":
    main()
