"""Seconds per training step with the clipped SGD update in `engine.kernels.sgd`'s kernels against
torch's update, side by side in one process (each measured twice, alternating): the measurement
behind `steps.SGD_KERNEL_PARAMETERS`. Prints microseconds per step.

    python benchmarks/sgd_update.py [--device cuda]
"""

import argparse

import torch

from cellsearch.cells import zoo
from cellsearch.evaluation.budget import hidden_size_for_budget
from cellsearch.train import bench, steps

# (name, vocabulary, layers, hidden or None for the bench's budget, K)
CASES = [("memorize", 28, 1, None, 1), ("memorize", 28, 1, None, 32),
         ("the filter's 3 x 30 units", 28, 3, 30, 1), ("arith", 40, 1, None, 1),
         ("arith", 40, 1, None, 32), ("ptb", 10_000, 2, None, 1), ("arith", 40, 1, None, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", type=int, default=len(CASES), help="only the first N cases")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    lstm, device = zoo.get("lstm"), torch.device(args.device)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# {machine}, torch {torch.__version__}; µs per training step")
    for name, vocabulary, layers, hidden, K in CASES[:args.cases]:
        if hidden is None:
            hidden = hidden_size_for_budget(
                bench.SHAPES[name][2], matrices_per_layer=lstm.num_matrices,
                biases_per_layer=lstm.num_biases, num_layers=layers, input_size=vocabulary,
                output_size=vocabulary, input_kind="embedding")
        times = {"kernels": [], "torch": []}
        for _ in range(2):
            for update, threshold in (("kernels", 0), ("torch", float("inf"))):
                steps.SGD_KERNEL_PARAMETERS = threshold
                seconds = bench.population_step_seconds(lstm, vocabulary, layers, hidden, K,
                                                        device, 50)
                times[update].append(round(seconds * 1e6))
        print(f"{name} K={K} n={hidden}: kernels {times['kernels']}  torch {times['torch']}",
              flush=True)


if __name__ == "__main__":
    main()
