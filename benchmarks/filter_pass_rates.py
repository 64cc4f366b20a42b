"""How often cells pass the memorization filter (issue 23): random memorize settings per cell,
trained exactly as the search's filter trains them (the search schedule, stopping at 95%), under
both loss normalizations; pass rates overall and by learning rate, init scale and clip.

    python benchmarks/filter_pass_rates.py [--cells lstm,gru,mut1,mut2,mut3,lstm-as-printed]
        [--settings 50] [--seed 1] [--device cuda] [--out rates.jsonl] [--tables]
        [--executor processes --workers 2]

Every setting's outcome is written to --out (JSON lines, appended as each chunk of settings
finishes, so an interrupted run can be resumed: settings already there are not trained again);
the tables are printed at the end, in markdown, with every failing setting. `--tables` prints
them for what --out holds, training nothing. The chunks run through one of cellsearch's
executors: on a 2-core CPU, `--executor processes --workers 2` trains two chunks at once, a
core each, about 1.8 times as fast as one process on both cores.
"""

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from cellsearch.cells import zoo
from cellsearch.evaluation.job import EvaluationJob
from cellsearch.evaluation.settings import LOSS_NORMALIZATIONS, SearchSpace
from cellsearch.executors import EXECUTORS, make_executor

THRESHOLD = 0.95
COLUMNS = ("num_layers", "learning_rate", "init_scale", "max_grad_norm")  # a failure's line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", default="lstm,gru,mut1,mut2,mut3,lstm-as-printed")
    parser.add_argument("--settings", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-epochs", type=int, default=None, help="a cap, for quick checks")
    parser.add_argument("--epoch-windows", type=int, default=None, help="for quick checks")
    parser.add_argument("--chunk", type=int, default=None,
                        help="train this many settings at a time (recorded as they finish)")
    parser.add_argument("--executor", choices=EXECUTORS, default="inprocess")
    parser.add_argument("--workers", type=int, default=None, help="for --executor processes")
    parser.add_argument("--out", default="filter-pass-rates.jsonl")
    parser.add_argument("--tables", action="store_true", help="only print --out's tables")
    args = parser.parse_args()
    out = Path(args.out)
    if args.tables:
        print_tables(out)
        return
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            entry = json.loads(line)
            done.add((entry["cell"], entry["loss_normalization"], entry["settings_key"]))
    settings = SearchSpace.for_search("memorize").sample_distinct(
        random.Random(args.seed), args.settings)
    jobs = []  # (job, cell, normalization)
    for normalization in LOSS_NORMALIZATIONS:
        for cell in args.cells.split(","):
            graph = zoo.get(cell)
            todo = [s for s in settings if (cell, normalization, s.key()) not in done]
            size = args.chunk or len(todo) or 1
            for chunk in (todo[i:i + size] for i in range(0, len(todo), size)):
                options = {"stop_at": THRESHOLD, "loss_normalization": normalization,
                           "max_epochs": args.max_epochs, "epoch_windows": args.epoch_windows}
                job = EvaluationJob(graph.canonical_hash(), graph.to_json(), "memorize",
                                    tuple(chunk), options)
                jobs.append((job, cell, normalization))
    with make_executor(args.executor, workers=args.workers, device=args.device) as executor:
        futures = {executor.submit(job): (cell, normalization) for job, cell, normalization in jobs}
        for future in executor.as_completed(list(futures)):
            record(out, *futures[future], future.result())
    print_tables(out)


def record(out: Path, cell: str, normalization: str, results) -> None:
    with out.open("a") as handle:
        for result in results:
            handle.write(json.dumps({
                "cell": cell, "loss_normalization": normalization,
                "settings_key": result.settings.key(),
                "settings": result.settings.to_dict(),
                "value": result.value if result.value == result.value else None,
                "passed": result.value >= THRESHOLD, "status": result.status,
                "epochs": result.epochs, "wall_seconds": round(result.wall_seconds, 1),
                "device": result.device,
                "history": [dict(entry) for entry in result.history],  # per epoch
            }) + "\n")


def print_tables(out: Path) -> None:
    records = [json.loads(line) for line in out.read_text().splitlines()]
    groups = defaultdict(list)
    for entry in records:
        groups[entry["cell"], entry["loss_normalization"]].append(entry)
    for (cell, normalization), items in sorted(groups.items()):
        passed = sum(item["passed"] for item in items)
        devices = ", ".join(sorted({item.get("device", "?") for item in items}))
        print(f"\n### {cell}, loss / {normalization}: {passed}/{len(items)} pass ({devices})\n")
        print("| by | pass / settings |\n|---|---|")
        for name in ("learning_rate", "init_scale", "max_grad_norm", "num_layers"):
            counts = defaultdict(lambda: [0, 0])
            for item in items:
                value = item["settings"][name]
                counts[value][0] += item["passed"]
                counts[value][1] += 1
            row = ", ".join(f"{value:g}: {p}/{n}" for value, (p, n) in sorted(counts.items()))
            print(f"| {name} | {row} |")
        scales = sorted({item["settings"]["init_scale"] for item in items})
        print("\n| layers \\ init | " + " | ".join(f"{scale:g}" for scale in scales) + " |")
        print("|---|" + "---|" * len(scales))
        for layers in sorted({item["settings"]["num_layers"] for item in items}):
            cells = []
            for scale in scales:
                here = [item["passed"] for item in items if item["settings"]["num_layers"]
                        == layers and item["settings"]["init_scale"] == scale]
                cells.append(f"{sum(here)}/{len(here)}" if here else "")
            print(f"| {layers} | " + " | ".join(cells) + " |")
        failed = sorted((item for item in items if not item["passed"]),
                        key=lambda item: [item["settings"][name] for name in COLUMNS])
        if failed:
            print(f"\nFailed ({' '.join(COLUMNS)} -> accuracy, epochs, status):\n")
        for item in failed:
            value = "nan" if item["value"] is None else f"{item['value']:.3f}"
            print("- " + " ".join(f"{item['settings'][name]:g}" for name in COLUMNS)
                  + f" -> {value}, {item['epochs']}, {item['status']}")


if __name__ == "__main__":
    main()
