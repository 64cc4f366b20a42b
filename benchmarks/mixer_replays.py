"""How many of a search's shared steps a CUDA graph would replay, counted on any device: every
`MixedSteps` the mixer makes, its calls, and which come after its warmup (on CUDA captured once,
then replayed; before that, eager). A small search through `--executor mixed`: arith and xml at
3,000 parameters, 1 and 2 layers, 4 settings a task, 6 steps in flight, epochs of 40 windows.

    python benchmarks/mixer_replays.py [--max-steps 4]   (~13 minutes on a 2-core CPU)
"""

import argparse
import time

from cellsearch.executors import InterleavedExecutor
from cellsearch.search import open_run, run_search
from cellsearch.storage import InMemoryStorage
from cellsearch.train import steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=4)
    args = parser.parse_args()
    made = []
    original = steps.MixedSteps.__init__

    def recorded(self, *arguments, **options):
        original(self, *arguments, **options)
        made.append(self)

    steps.MixedSteps.__init__ = recorded
    assignments = [
        'tasks=["arith", "xml"]', "initial_settings=4", "settings_per_task=4",
        "filter_threshold=0.0", "top_size=10", f"max_steps={args.max_steps}",
        "steps_in_flight=6",
        ('space_overrides={"memorize": {"num_parameters": [3000], "num_layers": [1]},'
         ' "arith": {"num_parameters": [3000], "num_layers": [1, 2]},'
         ' "xml": {"num_parameters": [3000], "num_layers": [1, 2]}}'),
        ('evaluation_options={"max_epochs": 4, "epoch_windows": 40, "valid_samples": 100,'
         ' "test_samples": 100}'),
    ]
    storage = InMemoryStorage()
    run_id, config = open_run(storage, assignments=assignments)
    started = time.perf_counter()
    run_search(storage, run_id, config, InterleavedExecutor(mixed=True))
    stepped = [step for shared in made for step in (shared.train_step, shared.eval_step)]
    calls = sum(step.calls for step in stepped)
    eager = sum(min(step.calls, step.warmup) for step in stepped)
    captures = sum(step.calls > step.warmup for step in stepped)
    replays = calls - eager - captures
    members = sum(len(shared.populations) * (shared.train_step.calls + shared.eval_step.calls)
                  for shared in made)
    print(f"{time.perf_counter() - started:.0f} s; shared steps made {len(made)}, run {calls}: "
          f"eager {eager} ({eager / calls:.0%}), captures {captures}, replays {replays} "
          f"({replays / calls:.0%}); populations a step {members / calls:.1f}")


if __name__ == "__main__":
    main()
