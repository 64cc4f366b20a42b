"""Train a population: K hyperparameter settings of one (graph, task, layers, hidden size) at once.

The protocol of §3.5–§3.7: minibatches of 20 rows unrolled for 35 steps with the state carried
across windows; plain SGD on the loss summed over the window's scored predictions and divided by
the minibatch size ("the gradient was divided by the size of the minibatch"), its norm clipped
per member; a learning-rate schedule per member driven by the validation loss; the test metrics
of each member's best-validation epoch are kept.

Members are independent: each has its own learning rate, clip norm, init scale, dropout and seed,
and stops when its own schedule ends. A member whose loss turns NaN/inf is marked diverged and
frozen; it cannot disturb the others, because no operation mixes members. The population shares
the data stream (the task's seed), so a population of K gives the same numbers as K runs of one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cellsearch.graph import CellGraph
from cellsearch.tasks import Task
from cellsearch.tasks import metrics as task_metrics
from cellsearch.train.hyperparameters import Settings
from cellsearch.train.model import PopulationModel
from cellsearch.train.result import DIVERGED, OK, Result
from cellsearch.train.schedules import schedule_for

BATCH_SIZE, NUM_STEPS = 20, 35  # §3.5


@dataclass(frozen=True)
class Progress:
    """What a progress display is told after every training window."""

    epoch: int
    window: int
    active: int  # members still training


def train_population(
    graph: CellGraph,
    task: Task,
    settings: Sequence[Settings],
    hidden_size: int,
    num_parameters: int,
    *,
    device: str | torch.device = "cpu",
    schedule: str = "search",
    max_epochs: int | None = None,
    batch_size: int = BATCH_SIZE,
    num_steps: int = NUM_STEPS,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[Result]:
    """Train every setting (all with the same num_layers) and return one Result each, in order."""
    started = time.perf_counter()
    device = torch.device(device)
    K = len(settings)
    layers = {s.num_layers for s in settings}
    if len(layers) != 1:
        raise ValueError(f"a population shares its number of layers, got {sorted(layers)}")
    model = PopulationModel(
        graph, K, task.input_size, task.output_size, hidden_size, layers.pop(),
        "embedding" if task.output_kind == "softmax" else "linear",
    )
    model.reset_parameters([s.init_scale for s in settings], [s.seed for s in settings])
    model.to(device)
    parameters = list(model.parameters())

    def per_member(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    max_norms = per_member([s.max_grad_norm for s in settings])
    dropout = per_member([s.dropout for s in settings]) if any(s.dropout for s in settings) else None
    schedules = [schedule_for(schedule, s) for s in settings]
    active = [True] * K
    status = [OK] * K
    reasons: list[str | None] = [None] * K
    best_valid: list[dict[str, float]] = [{} for _ in range(K)]
    best_test: list[dict[str, float]] = [{} for _ in range(K)]
    epochs_run = [0] * K

    epoch = 0
    while any(active) and (max_epochs is None or epoch < max_epochs):
        rates = per_member([sch.learning_rate if a else 0.0 for sch, a in zip(schedules, active)])
        finite = _train_epoch(model, parameters, task, epoch, rates, max_norms, dropout,
                              batch_size, num_steps, device, sum(active), on_progress)
        valid = _evaluate(model, task, "valid", batch_size, num_steps, device)
        improved = []
        for k in range(K):
            if not active[k]:
                continue
            epochs_run[k] = epoch + 1
            loss = valid["nll"][k]
            if not finite[k] or not math.isfinite(loss):
                active[k], status[k] = False, DIVERGED
                reasons[k] = f"the training loss became NaN or infinite in epoch {epoch + 1}"
                continue
            schedules[k].end_epoch(loss)
            if schedules[k].is_best:
                best_valid[k] = {name: values[k] for name, values in valid.items()}
                improved.append(k)
            if schedules[k].done:
                active[k] = False
        if improved:
            test = _evaluate(model, task, "test", batch_size, num_steps, device)
            for k in improved:
                best_test[k] = {name: values[k] for name, values in test.items()}
        epoch += 1

    wall = time.perf_counter() - started
    return [
        Result(
            task=task.name, settings=s, hidden_size=hidden_size, num_parameters=num_parameters,
            metric=task.metric, status=status[k], reason=reasons[k], valid=best_valid[k],
            test=best_test[k], epochs=epochs_run[k], wall_seconds=wall, device=str(device),
        )
        for k, s in enumerate(settings)
    ]


def _batch_tensors(batch, device):
    def move(array):
        return torch.from_numpy(array).to(device, non_blocking=True)

    return move(batch.inputs), move(batch.targets), move(batch.mask), move(batch.reset)


def _reset_rows(state, reset: torch.Tensor):
    """Zero the state of rows that start a new sequence; state tensors are (K, B, n)."""
    keep = (~reset).to(state[0][0].dtype).view(1, -1, 1)
    return [tuple(s * keep for s in layer) for layer in state]


def _stats(task: Task, logits, targets, mask):
    if task.output_kind == "softmax":
        stats = task_metrics.softmax_stats(logits, targets, mask)
        return stats, stats["loss_sum"]
    stats = task_metrics.sigmoid_stats(logits, targets, mask)
    return stats, stats["nll_sum"]


def _train_epoch(model, parameters, task, epoch, rates, max_norms, dropout,
                 batch_size, num_steps, device, active_count, on_progress) -> list[bool]:
    """One pass over the training windows; returns, per member, whether its loss stayed finite."""
    model.train()
    K = model.population_size
    finite = torch.ones(K, dtype=torch.bool, device=device)
    state = model.initial_state(batch_size)
    for window, batch in enumerate(task.batches("train", batch_size, num_steps, epoch=epoch)):
        inputs, targets, mask, reset = _batch_tensors(batch, device)
        state = _reset_rows(state, reset)
        logits, state = model(inputs, state, dropout)
        state = [tuple(s.detach() for s in layer) for layer in state]  # truncated BPTT
        _, loss_sums = _stats(task, logits, targets, mask)
        finite &= torch.isfinite(loss_sums)
        # Each member's loss depends on its own parameters only, so one backward of the sum
        # gives every member its own gradient.
        (loss_sums.sum() / batch.inputs.shape[1]).backward()
        _clipped_sgd_step(parameters, rates, max_norms)
        if on_progress is not None:
            on_progress(Progress(epoch + 1, window + 1, active_count))
    return finite.tolist()


@torch.no_grad()
def _clipped_sgd_step(parameters, rates: torch.Tensor, max_norms: torch.Tensor) -> None:
    """p[k] -= rate[k] * g[k] * min(1, max_norm[k] / |g[k]|), with |g[k]| over all of member k's
    parameters. Non-finite gradients (a diverged member) are zeroed so frozen members stay put."""
    grads = [p.grad for p in parameters]
    for g in grads:
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    squares = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (K,)
    scale = rates * torch.clamp(max_norms / (squares.sqrt() + 1e-6), max=1.0)
    for p, g in zip(parameters, grads):
        p.sub_(g * scale.view(-1, *([1] * (g.dim() - 1))))
        p.grad = None


@torch.no_grad()
def _evaluate(model, task, split, batch_size, num_steps, device) -> dict[str, list[float]]:
    model.eval()
    state = model.initial_state(batch_size)
    total = None
    for batch in task.batches(split, batch_size, num_steps):
        inputs, targets, mask, reset = _batch_tensors(batch, device)
        state = _reset_rows(state, reset)
        logits, state = model(inputs, state)
        stats, _ = _stats(task, logits, targets, mask)
        total = task_metrics.accumulate(total, stats)
    summary = task_metrics.summarize(total)
    return {name: [float(v) for v in values.tolist()] for name, values in summary.items()}
