"""The paper's strongest ablation (§4, Table 1): LSTM without a forget gate (LSTM-f) against the
LSTM with forget bias 1 (LSTM-b) on arith, at a small parameter budget, same settings for both.

    python benchmarks/ablation_arith.py [--device cuda] [--settings 8] [--budget 50000]
"""

import argparse
import datetime
import json
import random
import time

import torch

from cellsearch.cells import zoo
from cellsearch.evaluation.settings import SearchSpace
from cellsearch.train.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto")
    parser.add_argument("--settings", type=int, default=8)
    parser.add_argument("--budget", type=int, default=50_000)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--epoch-windows", type=int, default=None)
    parser.add_argument("--cells", default="lstm-f,lstm-b")
    args = parser.parse_args()
    space = SearchSpace.for_search("arith", {"num_parameters": (args.budget,), "num_layers": (1, 2)})
    settings = space.sample_distinct(random.Random(0), args.settings)
    print(f"# {datetime.date.today()}, torch {torch.__version__}, device {args.device}, "
          f"arith, budget {args.budget}, {args.settings} settings, max {args.max_epochs} epochs")
    for cell in args.cells.split(","):
        start = time.perf_counter()
        results = evaluate(zoo.get(cell), "arith", settings, device=args.device,
                           max_epochs=args.max_epochs, epoch_windows=args.epoch_windows)
        ok = [r for r in results if r.ok]
        best = max(ok, key=lambda r: r.value) if ok else None
        print(json.dumps({
            "cell": cell,
            "best_valid_accuracy": best.value if best else None,
            "best_test_accuracy": best.test.get("accuracy") if best else None,
            "valid_accuracies": sorted((round(r.value, 4) for r in ok), reverse=True),
            "failed": len(results) - len(ok),
            "wall_seconds": round(time.perf_counter() - start, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
