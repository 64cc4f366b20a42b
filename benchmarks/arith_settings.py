"""Wall time of N random settings of one architecture on arith under the search schedule, as the
search evaluates them (`evaluate`, populations by shape side by side), with each population's
completion time printed as it finishes — the arith half of `cellsearch bench --search-costs`,
drawn the same way, for runs that may be stopped before the end.

    python benchmarks/arith_settings.py --device cuda [--settings 20] [--cell lstm]
"""

import argparse
import json
import random
import time

import cellsearch.train.evaluate as evaluation
from cellsearch.cells import zoo
from cellsearch.evaluation.settings import SearchSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--settings", type=int, default=20)
    parser.add_argument("--cell", default="lstm")
    args = parser.parse_args()

    rng = random.Random(0)
    SearchSpace.for_search("memorize").sample_distinct(rng, 1)  # bench.search_costs draws it first
    settings = SearchSpace.for_search("arith").sample_distinct(rng, args.settings)
    start = time.perf_counter()
    train_population = evaluation.train_population

    def reporting(graph, task, members, *rest, **options):
        began = time.perf_counter()
        results = train_population(graph, task, members, *rest, **options)
        print(f"{time.perf_counter() - start:6.0f} s: a population of {len(members)} "
              f"({members[0].num_layers} layers, {members[0].num_parameters:,} parameters) "
              f"finished after {time.perf_counter() - began:.0f} s, epochs "
              f"{[r.epochs for r in results]}", flush=True)
        return results

    evaluation.train_population = reporting
    results = evaluation.evaluate(zoo.resolve(args.cell), "arith", settings, device=args.device)
    wall = time.perf_counter() - start
    print(json.dumps({"settings": len(settings), "wall_seconds": wall,
                      "settings_per_gpu_hour": len(settings) * 3600 / wall,
                      "epochs": [r.epochs for r in results], "values": [r.value for r in results]}))


if __name__ == "__main__":
    main()
