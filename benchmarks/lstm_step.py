"""Step time of `cellsearch.nn.RNN` with the LSTM graph against `torch.nn.LSTM`, side by side.

One training step = forward over 35 steps + backward, batch 20, hidden 200 (the paper's shapes),
measured alternately in one process so both see the same machine state. Prints a Markdown row.

    python benchmarks/lstm_step.py [--device cpu] [--hidden 200] [--repeats 30]
"""

import argparse
import datetime
import platform
import statistics
import time

import torch

from cellsearch.cells import zoo
from cellsearch.nn import RNN


def time_step(module, inputs, device) -> float:
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    output, _ = module(inputs)
    output.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = args.hidden
    ours = RNN(zoo.get("lstm"), n, n).to(device)
    reference = torch.nn.LSTM(n, n).to(device)
    inputs = torch.randn(args.steps, args.batch, n, device=device)
    times = {"torch.nn.LSTM": [], "cellsearch RNN(lstm)": []}
    for _ in range(3):  # warm-up
        time_step(ours, inputs, device), time_step(reference, inputs, device)
    for _ in range(args.repeats):
        times["torch.nn.LSTM"].append(time_step(reference, inputs, device))
        times["cellsearch RNN(lstm)"].append(time_step(ours, inputs, device))
    base = statistics.median(times["torch.nn.LSTM"])
    cpu = platform.processor() or platform.machine()
    print(f"# {datetime.date.today()}, torch {torch.__version__}, device {device} ({cpu}), "
          f"threads {torch.get_num_threads()}, hidden {n}, batch {args.batch}, steps {args.steps}")
    print("| module | median ms/step (fwd+bwd) | ratio to torch.nn.LSTM |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1e3:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
