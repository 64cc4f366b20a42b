"""The host's time to drive P populations through a mixer, a window each per flush, with the
shared steps themselves faked (they launch nothing): what `--executor mixed` spends on the CPU
for each population and window beside the GPU's work (drawing the windows, loading them, the
populations' generators, the mixer's bookkeeping). On a GPU a flush's steps run while the host
prepares the next, so this time bounds the windows a second a mix can train.

    python benchmarks/mixer_overhead.py [--populations 50,200] [--windows 100]
"""

import argparse
import time

import torch

from cellsearch.cells import zoo
from cellsearch.tasks.memorize import Memorize
from cellsearch.train import steps as steps_module
from cellsearch.train.model import PopulationModel
from cellsearch.train.steps import Mixer, PopulationSteps


class _Step:
    graph = None  # (never captured)
    calls = 0

    def __call__(self) -> None:
        self.calls += 1


class _Shared:
    """Stands in for `MixedSteps`: runs nothing."""

    def __init__(self, populations, capture, warmup):
        self.populations, self.device = populations, torch.device("cpu")
        self.train_step, self.eval_step = _Step(), _Step()


def seconds_a_flush(populations: int, windows: int) -> float:
    task = Memorize(seed=0, epoch_windows=windows, valid_samples=30, test_samples=30)
    mixer = Mixer(capture=False)
    runs = []
    for _ in range(populations):
        model = PopulationModel(zoo.get("gru"), 3, task.input_size, task.output_size, 8, 1,
                                "embedding")
        steps = PopulationSteps(model, task, 20, 35, torch.ones(3), None, capture=False,
                                mixer=mixer)
        runs.append(steps.train_windows(0, [0.1] * 3))
    started, flushes = time.perf_counter(), 0
    while runs:
        for run in list(runs):
            try:
                next(run)
            except StopIteration:
                runs.remove(run)
        mixer.flush()
        flushes += 1
    return (time.perf_counter() - started) / flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--populations", default="50,200")
    parser.add_argument("--windows", type=int, default=100)
    args = parser.parse_args()
    steps_module.MixedSteps = _Shared
    print(f"# torch {torch.__version__}; GRU populations of K=3 on memorize, 20 x 35 windows")
    print("| populations | ms a flush | µs a population and window |")
    print("|---:|---:|---:|")
    for count in (int(p) for p in args.populations.split(",")):
        seconds = seconds_a_flush(count, args.windows)
        print(f"| {count} | {seconds * 1e3:.2f} | {seconds / count * 1e6:.1f} |")


if __name__ == "__main__":
    main()
