"""The memorization filter's wall time per candidate, in one process, as a search's worker meets
candidates: the LSTM twice, then mutated GRUs, each twice (the first time, its kernels compile).
Every candidate trains the search space's first random filter setting, as `cellsearch bench
--search-costs` does, with `stop_at` at the filter's threshold.

    python benchmarks/filter_candidates.py [--device cuda] [--mutants 2]
"""

import argparse
import json
import random
import time

from cellsearch.cells import zoo
from cellsearch.cells.mutate import mutate
from cellsearch.evaluation.settings import SearchSpace
from cellsearch.search.config import SearchConfig
from cellsearch.train.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mutants", type=int, default=2)
    args = parser.parse_args()
    search = SearchConfig()
    setting = SearchSpace.for_search(search.filter_task).sample_distinct(random.Random(0), 1)[0]
    candidates = [("lstm", zoo.get("lstm"))]
    candidates += [(f"mutated gru {seed}", mutate(zoo.get("gru"), random.Random(seed)).graph)
                   for seed in range(1, args.mutants + 1)]
    for name, graph in candidates:
        for attempt in ("first", "again"):
            start = time.perf_counter()
            (result,) = evaluate(graph, search.filter_task, [setting], device=args.device,
                                 stop_at=search.filter_threshold)
            print(json.dumps({"candidate": name, "call": attempt,
                              "wall_seconds": round(time.perf_counter() - start, 2),
                              "epochs": result.epochs, "accuracy": result.value}), flush=True)


if __name__ == "__main__":
    main()
