"""Every GPU measurement the open issues wait for, in one resumable call for a device session.

    python benchmarks/gpu_campaign.py --out $OUT [--minutes 28] [--parts a,b] [--baseline-src DIR]

Parts, in priority order (each writes OUT/<part>.json when done, and a later call skips it):

    gpu-tests          `pytest -m gpu` (the mixed engine's kernels compiled for the GPU; issue 19:
                       the same results after the layout change)
    bench-mixed        `cellsearch bench --mixed 16`: 16 different cells at K=4 together, by the
                       interleaved executor and by the mixed engine, against one cell at K=4 and
                       at K=64; again with each population's own SGD, and its own products,
                       in the mixed steps instead of the grouped ones, and with the whole
                       window's kernels, side by side (issue 22); the search parts then use
                       whichever window kernels trained faster
    search-mixed       `cellsearch search --executor mixed` with the paper's defaults
                       (`initial_settings=20`) for --search-minutes; evaluations per hour and
                       tokens/s from the evaluations stored in that time (issue 22)
    search-inprocess   the same with the default executor, the sequential search (issue 22)
    search-mixed-64    search-mixed with 64 steps in flight instead of 16 (issue 22: whether
                       16 jobs in flight leave the GPU short of work)
    search-interleaved the same with `--executor interleaved` (issue 22)
    bench-layout       `cellsearch bench` from --baseline-src and from this tree, alternating,
                       two rounds (issue 19; skipped without --baseline-src)
    filter-pass-rates  benchmarks/filter_pass_rates.py, 50 settings per cell, resumable within
                       the part too (issue 23)
    table-1, table-2, table-3
                       `cellsearch reproduce --table N` (20 settings per cell and column; Table
                       3's 5M column) with the mixed executor for what is left of the call,
                       resumed by the next; after each call OUT/table-N.md and OUT/table-N-plots
                       hold `cellsearch report` of what is stored so far (issue 23)
    scaling            `--executor dask-local` on 1 GPU, 2 and all: evaluations per hour, each
                       GPU's busy fraction, the ratio; a worker killed halfway through the widest
                       run (issue 17; waits for a machine of several GPUs)

A part starts only if its estimate fits in what is left of --minutes; what does not fit runs in
the next session's call. A part that fails leaves OUT/<part>.failed.txt (why) and no marker,
and the call goes on with the next. A search part's database stays in OUT, so the next call
resumes it (throughput counts only the evaluations stored during the call). `--quick` shrinks
every part for a check on a CPU (the tests run it so).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("gpu-tests", "bench-mixed", "search-mixed", "search-inprocess", "search-mixed-64",
         "search-interleaved", "bench-layout", "filter-pass-rates", "table-1", "table-2",
         "table-3", "scaling")
ESTIMATES = {"gpu-tests": 4, "bench-mixed": 11, "search-mixed": 9, "search-inprocess": 9,
             "search-mixed-64": 9, "search-interleaved": 9, "bench-layout": 6,
             "filter-pass-rates": 10, "table-1": 5, "table-2": 5, "table-3": 5,
             "scaling": 27}  # minutes (a table's: the least worth starting; it takes the rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where results go (e.g. $OUT)")
    parser.add_argument("--minutes", type=float, default=28, help="this call's budget")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--search-minutes", type=float, default=8)
    parser.add_argument("--baseline-src", help="the src/ directory of the revision to compare with")
    parser.add_argument("--quick", action="store_true", help="tiny versions of every part")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if args.baseline_src and not (Path(args.baseline_src) / "cellsearch").is_dir():
        # (else the baseline would silently import this tree's package)
        parser.error(f"--baseline-src {args.baseline_src} holds no cellsearch package")
    deadline = time.monotonic() + args.minutes * 60
    args.deadline = deadline
    for part in parts:
        marker = out / f"{part}.json"
        if marker.exists():
            print(f"{part}: done in an earlier call ({marker})")
            continue
        left = (deadline - time.monotonic()) / 60
        estimate = 0.5 if args.quick else ESTIMATES[part]
        if part.startswith("search-") and not args.quick:
            estimate = args.search_minutes + 1
        if part == "scaling" and not args.quick:
            estimate = 3 * (args.search_minutes + 1)
        if estimate > left:
            print(f"{part}: needs ~{estimate:.0f} min, {left:.1f} left: next call")
            continue
        print(f"{part}: running (~{estimate:.0f} min)", flush=True)
        started = time.monotonic()
        try:
            result = RUNNERS[part](args, out)
        except Exception as error:  # noqa: BLE001 - a device session is too short to lose
            (out / f"{part}.failed.txt").write_text(failure(error))
            print(f"{part}: failed, see {out / f'{part}.failed.txt'}; going on", flush=True)
            continue
        if result is None:
            continue
        record = {"part": part, "minutes": round((time.monotonic() - started) / 60, 2),
                  **machine(args.device), **result}
        marker.write_text(json.dumps(record, indent=2))
        print(f"{part}: {json.dumps(result)[:300]}", flush=True)
    return 0


def failure(error: Exception) -> str:
    """What made a part fail: the traceback, and a command's own output when one failed."""
    text = "".join(traceback.format_exception(error))
    if isinstance(error, subprocess.CalledProcessError):
        text += f"\n--- stdout\n{error.stdout}\n--- stderr\n{error.stderr}"
    return text


def machine(device: str) -> dict:
    """Device, versions, commit and date, for the record."""
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'gpu': "
             "torch.cuda.get_device_name() if torch.cuda.is_available() else None}))")
    facts = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                      text=True, check=True).stdout)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None
    return {"device": device, **facts, "python": sys.version.split()[0], "commit": commit,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# What the command does without one of the mixed steps' grouped kernels, to measure it against:
# each population's own SGD update, or its own static parts' and output layer's products
# (`steps.MixedSteps`, `mixed.form_products`).
WITHOUT = {"grouped-sgd": "from cellsearch.train import steps; "
                          "steps._grouped_usable = lambda device: False; ",
           "grouped-products": "from cellsearch.engine import mixed; "
                               "mixed._products_usable = lambda device: False; "}


def cellsearch(*arguments: str, src: str | None = None, without: tuple[str, ...] = (),
               **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    command = ["-m", "cellsearch"]
    if without:
        command = ["-c", "import sys; " + "".join(WITHOUT[name] for name in without)
                   + "from cellsearch.cli import main; sys.exit(main(sys.argv[1:]))"]
    return subprocess.run([sys.executable, *command, *arguments], env=env,
                          capture_output=True, text=True, **kwargs)


def bench_mixed(args, out: Path) -> dict:
    """With the interleaved executor's 32 hardware queues, with CUDA's default 8, and with 32
    and each population's own SGD update, or its own products, in the mixed steps."""
    cells, windows = ("3", "5") if args.quick else ("16", "200")
    figures = {}
    for name, connections, without, kernel in (
            ("connections_32", "32", (), "triton"),
            ("connections_8", "8", (), "triton"),
            ("connections_32_own_sgd", "32", ("grouped-sgd",), "triton"),
            ("connections_32_own_products", "32", ("grouped-products",), "triton"),
            ("connections_32_persistent", "32", (), "persistent")):
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = connections
        os.environ["CELLSEARCH_MIXED_KERNEL"] = kernel
        done = cellsearch("bench", "--mixed", cells, "--windows", windows, "--device",
                          args.device, "--json", without=without)
        if done.returncode:  # the others are still worth having
            figures[name] = {"returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}
            continue
        figures[name] = json.loads(done.stdout)
    del os.environ["CUDA_DEVICE_MAX_CONNECTIONS"], os.environ["CELLSEARCH_MIXED_KERNEL"]
    return {"bench": figures}


def window_kernel(out: Path) -> str:
    """The mixed engine's kernels that trained faster in this campaign's bench-mixed part: a
    stage at a time ("triton", also without that part's figures) or the whole window."""
    try:
        bench = json.loads((out / "bench-mixed.json").read_text())["bench"]
        speed = {name: next(row["tokens_per_second"] for row in bench[name]["mixed"]
                            if row["what"] == "different cells, mixed engine")
                 for name in ("connections_32", "connections_32_persistent")}
    except (OSError, KeyError, StopIteration, ValueError):
        return "triton"
    faster = speed["connections_32_persistent"] > speed["connections_32"]
    return "persistent" if faster else "triton"


def search(executor: str, steps_in_flight: int | None = None):
    """A search part; with `steps_in_flight`, that many (the default, 16, may leave a GPU
    short of work: one job in flight per step)."""
    def run(args, out: Path) -> dict:
        name = executor if steps_in_flight is None else f"{executor}-{steps_in_flight}"
        database = out / f"search-{name}.db"
        started = datetime.now(timezone.utc)
        wider = [] if steps_in_flight is None else ["--set", f"steps_in_flight={steps_in_flight}"]
        kernel = window_kernel(out)
        os.environ["CELLSEARCH_MIXED_KERNEL"] = kernel
        try:
            stderr = timed_search(args, database, ["--executor", executor, *wider])
        finally:
            del os.environ["CELLSEARCH_MIXED_KERNEL"]
        return {"executor": executor, "steps_in_flight": steps_in_flight or 16,
                "mixed_kernel": kernel, **throughput(database, started), "stderr_tail": stderr}

    return run


def timed_search(args, database: Path, options: list[str], during=None,
                 quick_steps: int = 2) -> str:
    """`cellsearch search` with the paper's defaults (the initial grid sampled: 20 settings) for
    --search-minutes, then stopped as Ctrl-C stops it; `during(process, fraction of the time
    gone)` is called every few seconds. Returns the end of its stderr and stdout (which ends
    with the mixed engine's shared steps, `--executor mixed`). With --quick, the tiny preset's
    search of `quick_steps` steps, which may end before the time does."""
    minutes = 0.3 if args.quick else args.search_minutes
    settings = (["--preset", "tiny", "--set", f"max_steps={quick_steps}"] if args.quick
                else ["--set", "initial_settings=20"])
    command = [sys.executable, "-m", "cellsearch", "search", "--db", str(database), "--device",
               args.device, "--quiet", *options, *settings]
    return timed(command, minutes, during, poll=0.5 if args.quick else 5)[1]


INTERRUPTED = 130  # the command's exit code when stopped as Ctrl-C stops it


def timed(command: list[str], minutes: float, during=None, poll: float = 5) -> tuple[int, str]:
    """Runs `command` until it ends or `minutes` pass, then stops it as Ctrl-C does (a kill would
    lose only the jobs in flight); its exit code and the end of its stderr and stdout."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < minutes * 60:
        if during is not None:
            during(process, (time.monotonic() - started) / (minutes * 60))
        time.sleep(poll)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode, process.stderr.read()[-500:] + process.stdout.read()[-300:]


def reproduce(table: int, columns: str | None = None):
    """A table of issue 23's campaign: `cellsearch reproduce` (the paper's cells, 20 settings
    per cell and column, the table's schedule, the mixed executor) for what is left of the
    call, then stopped; the next call resumes it. The report of what is stored so far goes to
    OUT/table-N.md and OUT/table-N-plots either way; the part is done once every setting is."""
    def run(args, out: Path) -> dict | None:
        name = f"table-{table}"
        database = out / f"{name}.db"
        scope = ["--columns", columns] if columns else []
        if args.quick:
            scope = ["--cells", "lstm,gru", "--settings", "1", "--columns",
                     "Arith." if table == 1 else "N", "--set", "max_epochs=1", "--set",
                     "epoch_windows=3", "--set", "space.num_parameters=[3000]"]
        os.environ["CELLSEARCH_MIXED_KERNEL"] = window_kernel(out)
        try:
            minutes = max((args.deadline - time.monotonic()) / 60 - 1, 1)
            code, tail = timed([sys.executable, "-m", "cellsearch", "reproduce", "--db",
                                str(database), "--table", str(table), "--device", args.device,
                                "--executor", "mixed", "--quiet", *scope], minutes,
                               poll=0.5 if args.quick else 5)
        finally:
            del os.environ["CELLSEARCH_MIXED_KERNEL"]
        if code not in (0, INTERRUPTED) or not database.exists():
            raise RuntimeError(f"reproduce failed (exit {code}):\n{tail}")
        report = cellsearch("report", "--db", str(database), "--format", "markdown", "--plots",
                            str(out / f"{name}-plots"), check=True)
        (out / f"{name}.md").write_text(report.stdout)
        if code == INTERRUPTED:
            print(f"{name}: stopped with {stored(database)} settings stored; the next call goes "
                  "on", flush=True)
            return None
        return {"settings_stored": stored(database), "report": f"{name}.md", "tail": tail}

    return run


def stored(database: Path) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from cellsearch.storage import open_storage

    with open_storage(database, create=False) as storage:
        return storage.count_evaluations(storage.latest_run().run_id)


def throughput(database: Path, since: datetime) -> dict:
    """Evaluations stored since `since`, and their rate over the time from `since` to the last;
    the failed ones counted by the start of their reason (a shared step out of memory fails
    every population in it: the figure must say so)."""
    sys.path.insert(0, str(ROOT / "src"))
    from cellsearch.storage import open_storage

    with open_storage(database, create=False) as storage:
        run = storage.latest_run()
        records = [r for r in storage.get_evaluations(run.run_id)
                   if r.created_at and datetime.fromisoformat(r.created_at) >= since]
        steps = storage.last_completed_step(run.run_id)
    if not records:
        return {"evaluations": 0, "last_completed_step": steps}
    last = max(datetime.fromisoformat(r.created_at) for r in records)
    seconds = max((last - since).total_seconds(), 1e-9)
    return {"evaluations": len(records), "seconds": round(seconds, 1),
            "evaluations_per_hour": round(len(records) / seconds * 3600, 1),
            "tokens_per_second": round(sum(r.result.tokens for r in records) / seconds),
            "by_task": {task: sum(1 for r in records if r.task == task)
                        for task in sorted({r.task for r in records})},
            "failed": dict(Counter(f"{r.result.status}: {(r.result.reason or '')[:60]}"
                                   for r in records if not r.result.ok)),
            "last_completed_step": steps}


def gpu_tests(args, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider", *(["-x", "-k", "nothing"] if args.quick else [])],
                          cwd=ROOT, capture_output=True, text=True)
    (out / "gpu-tests.log").write_text(done.stdout + done.stderr)
    return {"returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-1:]}


def bench_layout(args, out: Path) -> dict | None:
    if not args.baseline_src:
        print("bench-layout: no --baseline-src: skipped")
        return None
    options = ["bench", "--device", args.device, "--json"]
    if args.quick:
        options += ["--task", "memorize", "--populations", "1", "--repeats", "2"]
    rounds = []
    for _ in range(1 if args.quick else 2):
        for label, src in (("baseline", args.baseline_src), ("this", str(ROOT / "src"))):
            done = cellsearch(*options, src=src, check=True)
            rounds.append({"tree": label, "bench": json.loads(done.stdout)})
    return {"rounds": rounds}


def filter_pass_rates(args, out: Path) -> dict | None:
    """Stops after its estimate; the settings trained so far stay in the JSON lines, and the next
    call goes on from there."""
    options = (["--cells", "lstm", "--settings", "2", "--max-epochs", "1", "--epoch-windows",
                "3"] if args.quick else ["--chunk", "24"])
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "filter_pass_rates.py"), "--device",
             args.device, "--out", str(out / "filter-pass-rates.jsonl"), *options],
            capture_output=True, text=True, check=True,
            timeout=ESTIMATES["filter-pass-rates"] * 60)
    except subprocess.TimeoutExpired:
        print("filter-pass-rates: stopped at its estimate; the next call goes on")
        return None
    (out / "filter-pass-rates.txt").write_text(done.stdout)
    return {"tables": done.stdout[-3000:]}


def scaling(args, out: Path) -> dict | None:
    """Issue 17: the search with `--executor dask-local` on 1 GPU, then on 2 (and on every GPU,
    when there are more), each worker training up to 16 jobs together, for --search-minutes
    each: evaluations per hour from the database, each GPU's busy fraction from nvidia-smi, the
    ratio to one GPU. In the widest run one worker is killed halfway; its jobs must be rerun
    elsewhere, nothing lost or repeated."""
    gpus = 2 if args.quick else gpu_count()
    if gpus < 2:
        print(f"scaling: needs a machine of 2 or more GPUs; this one has {gpus}: next call")
        return None
    runs = {}
    counts = sorted({1, 2, gpus})
    for count in counts:
        database = out / f"scaling-{count}.db"
        samples: list[str] = []
        killed: list[int] = []
        killed_at: list[datetime] = []

        def during(process, fraction, count=count, samples=samples, killed=killed,
                   killed_at=killed_at):
            if not args.quick:
                samples.append(nvidia_smi())
            if count == counts[-1] and fraction >= 0.5 and not killed:
                workers = dask_workers(process.pid)
                if workers:
                    workers[0].kill()
                    killed.append(workers[0].pid)
                    killed_at.append(datetime.now(timezone.utc))

        started = datetime.now(timezone.utc)
        # each worker fed as `--executor mixed` feeds its one GPU (16 steps in flight)
        stderr = timed_search(args, database, [
            "--executor", "dask-local", "--workers", str(count), "--jobs-per-worker", "16",
            "--set", f"steps_in_flight={16 * count}"], during, quick_steps=1000)  # (killed)
        runs[count] = {**throughput(database, started), **integrity(database),
                       "busy": busy_fractions(samples), "killed_worker": killed,
                       "stderr_tail": stderr}
        if killed_at:  # the search went on: what it stored after the kill
            runs[count]["evaluations_after_kill"] = throughput(
                database, killed_at[0]).get("evaluations", 0)
    one = runs[1].get("evaluations_per_hour") or 0
    ratios = {count: round(run.get("evaluations_per_hour", 0) / one, 2) if one else None
              for count, run in runs.items()}
    return {"runs": runs, "ratio_to_one_gpu": ratios}


def gpu_count() -> int:
    probe = "import torch; print(torch.cuda.device_count())"
    return int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True).stdout)


def nvidia_smi() -> str:
    done = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return done.stdout.strip().replace("\n", "; ")


def busy_fractions(samples: list[str]) -> dict[str, float]:
    """Per GPU, the mean of nvidia-smi's utilization samples (the share of time a kernel ran)."""
    per_gpu: dict[str, list[float]] = {}
    for sample in samples:
        for entry in filter(None, sample.split("; ")):
            index, value = (part.strip() for part in entry.split(","))
            per_gpu.setdefault(index, []).append(float(value) / 100)
    return {index: round(sum(values) / len(values), 3) for index, values in per_gpu.items()}


def dask_workers(pid: int) -> list:
    """The worker processes a `dask-local` search started (its nannies' children)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if ("spawn_main" in line or "forkserver" in line) and "resource_tracker" not in line:
            found.append(child)
    return found


def integrity(database: Path) -> dict:
    """The database's own check, and whether any (architecture, task, setting) was stored twice."""
    import sqlite3

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        check = connection.execute("PRAGMA integrity_check").fetchone()[0]
        repeated = connection.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM evaluations GROUP BY run_id,"
            " architecture_hash, task, settings_key HAVING COUNT(*) > 1)").fetchone()[0]
    finally:
        connection.close()
    return {"integrity_check": check, "repeated_evaluations": repeated}


RUNNERS = {"bench-mixed": bench_mixed, "search-mixed": search("mixed"),
           "search-mixed-64": search("mixed", steps_in_flight=64),
           "search-interleaved": search("interleaved"),
           "search-inprocess": search("inprocess"), "gpu-tests": gpu_tests,
           "bench-layout": bench_layout, "filter-pass-rates": filter_pass_rates,
           "table-1": reproduce(1), "table-2": reproduce(2), "table-3": reproduce(3, "5M-tst"),
           "scaling": scaling}

if __name__ == "__main__":
    sys.exit(main())
