"""What a model sees at its first training window, by cell, depth and init scale (issue 23): why
memorization runs at small init scales sit at chance. The model is built and initialized as the
filter builds it (§3.7: U[-a, a], a = scale / sqrt(n), the 25K budget's hidden size n) for 8
seeds; one window of the memorize task's training stream goes forward and back, with the loss
of `train/steps.py` (the scored targets' summed cross-entropy, over the minibatch size).

    python benchmarks/init_signal.py [--cells lstm,lstm-as-printed,gru,mut1,mut2,mut3]
        [--seeds 8] [--normalization minibatch|targets]

Printed per cell (markdown), median over the seeds: the top layer's output RMS; the norm of the
gradient of the cell's own parameters (every layer's matrices and biases: what must move for the
model to leave predicting letter frequencies) and of the output layer's (which can learn those
frequencies alone); and the RMS of the loss's gradient with respect to the embedded inputs of the
read phase (the letters the model must store, 6 steps before it is asked for them: the signal
that teaches it to). SGD moves a parameter by lr times its gradient, clipped to the norm. Last,
the loss's curvature along the output bias (the largest eigenvalue of its Hessian there, the sum
over scored targets of diag(p) - p p^T over the divisor): plain SGD on it diverges above a
learning rate of 2 / curvature, printed as "lr limit".
"""

import argparse
import statistics

import torch
import torch.nn.functional as F

from cellsearch.cells import zoo
from cellsearch.evaluation.settings import INIT_SCALES, PARAMETER_BUDGETS, Settings
from cellsearch.tasks import shared_task
from cellsearch.train.evaluate import model_shape
from cellsearch.train.model import PopulationModel, input_kind

(BUDGET,) = PARAMETER_BUDGETS["memorize"]  # the memorization filter's 25K (§3.1)
LAYERS = (1, 2, 3, 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", default="lstm,lstm-as-printed,gru,mut1,mut2,mut3")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--normalization", choices=("minibatch", "targets"),
                        default="minibatch")
    args = parser.parse_args()
    torch.manual_seed(0)
    task = shared_task("memorize")
    batch = next(iter(task.batches("train", 20, 35, epoch=0)))
    for cell in args.cells.split(","):
        print(f"\n### {cell}\n")
        print("| layers | hidden | init | top h RMS | cell gradient | output gradient | "
              "read gradient | lr limit |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for layers in LAYERS:
            for scale in INIT_SCALES:
                row = measure(cell, task, batch, layers, scale, args.seeds, args.normalization)
                print(f"| {layers} | {row['hidden']} | {scale:g} | {row['rms']:.2e} | "
                      f"{row['cell']:.2e} | {row['output']:.2e} | {row['read']:.2e} | "
                      f"{row['limit']:.2f} |")


def measure(cell, task, batch, layers, scale, seeds, normalization) -> dict:
    graph = zoo.get(cell)
    shape = Settings(init_scale=scale, learning_rate=1.0, max_grad_norm=1.0, num_layers=layers,
                     num_parameters=BUDGET)  # (only the depth and budget matter here)
    hidden, _ = model_shape(graph, task, shape)
    model = PopulationModel(graph, seeds, task.input_size, task.output_size, hidden, layers,
                            input_kind(task))
    model.reset_parameters([scale] * seeds, list(range(1, seeds + 1)))
    inputs = torch.from_numpy(batch.inputs)
    targets = torch.from_numpy(batch.targets)
    mask = torch.from_numpy(batch.mask)
    x = embedded = model.embed(inputs)
    embedded.retain_grad()
    for layer, state in zip(model.layers, model.initial_state(inputs.shape[1])):
        x, _ = layer(x, state)
    top = x.detach()  # (K, T, B, n)
    logits = model.output(x)  # (T, K, B, V)
    losses = F.cross_entropy(logits.permute(1, 3, 0, 2), targets.expand(seeds, -1, -1),
                             reduction="none")  # (K, T, B)
    divisor = mask.sum() if normalization == "targets" else mask.shape[1]
    (losses * mask).sum().div(divisor).backward()
    probabilities = logits.detach().softmax(-1).permute(1, 0, 2, 3)[:, mask.bool()]  # (K, S, V)
    hessian = (torch.diag_embed(probabilities.sum(1))
               - probabilities.transpose(1, 2) @ probabilities) / divisor  # (K, V, V)
    curvature = torch.linalg.eigvalsh(hessian.double())[:, -1]
    own = list(model.layers.parameters())
    output = [model.output_weight, model.output_bias]
    return {
        "hidden": hidden,
        "rms": statistics.median(top.pow(2).mean(dim=(1, 2, 3)).sqrt().tolist()),
        "cell": statistics.median(norms(own).tolist()),
        "output": statistics.median(norms(output).tolist()),
        "limit": statistics.median((2 / curvature).tolist()),
        "read": statistics.median(embedded.grad[:, mask == 0].pow(2).mean(dim=(1, 2)).sqrt()
                                  .tolist()),
    }


def norms(parameters) -> torch.Tensor:
    """Each member's gradient norm over `parameters` (leading dimension: the member)."""
    return torch.stack([p.grad.pow(2).flatten(1).sum(1) for p in parameters]).sum(0).sqrt()


if __name__ == "__main__":
    main()
