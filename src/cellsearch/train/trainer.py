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
from typing import Any, Callable, Generator, Sequence

import torch

from cellsearch.cells.graph import CellGraph
from cellsearch.evaluation.result import DIVERGED, LOWER_IS_BETTER, OK, Result
from cellsearch.evaluation.settings import Settings
from cellsearch.tasks import Task
from cellsearch.train.model import Dropout, PopulationModel, default_engine, input_kind
from cellsearch.train.schedules import schedule_for
from cellsearch.train.steps import Mixer, PopulationSteps, drive

BATCH_SIZE, NUM_STEPS = 20, 35  # §3.5


@dataclass(frozen=True)
class Progress:
    """What a progress display is told after every training window."""

    epoch: int
    window: int
    active: int  # members still training


def train_population(*args: Any, **kwargs: Any) -> list[Result]:
    """Train every setting (all with the same num_layers) and return one Result each, in order;
    the arguments are `population_run`'s."""
    return drive(population_run(*args, **kwargs))


def population_steps(
    graph: CellGraph,
    task: Task,
    settings: Sequence[Settings],
    hidden_size: int,
    *,
    device: torch.device,
    batch_size: int = BATCH_SIZE,
    num_steps: int = NUM_STEPS,
    capture: bool = True,
    engine: str | None = None,
    loss_normalization: str = "minibatch",
    mixer: Mixer | None = None,
) -> PopulationSteps:
    """The settings' population (all with the same num_layers) on `device`, each member
    initialized from its own scale and seed, with its clip norm and dropout: its steps, ready
    for a window. `capture` applies on CUDA only; a `mixer` trains it in steps shared with
    other populations (`steps.Mixer`)."""
    layers = {s.num_layers for s in settings}
    if len(layers) != 1:
        raise ValueError(f"a population shares its number of layers, got {sorted(layers)}")
    model = PopulationModel(
        graph, len(settings), task.input_size, task.output_size, hidden_size, layers.pop(),
        input_kind(task), engine or default_engine(device),
    )
    model.reset_parameters([s.init_scale for s in settings], [s.seed for s in settings])
    model.to(device)

    def per_member(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    dropout = None
    if any(s.dropout for s in settings):
        seeds = torch.tensor([s.seed for s in settings], device=device)
        dropout = Dropout(per_member([s.dropout for s in settings]), seeds)
    return PopulationSteps(model, task, batch_size, num_steps,
                           per_member([s.max_grad_norm for s in settings]), dropout,
                           capture=capture and device.type == "cuda",
                           loss_normalization=loss_normalization, mixer=mixer)


def population_run(
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
    capture: bool = True,
    engine: str | None = None,
    stop_at: float | None = None,
    loss_normalization: str = "minibatch",
    on_progress: Callable[[Progress], None] | None = None,
    mixer: Mixer | None = None,
) -> Generator[None, None, list[Result]]:
    """Train every setting (all with the same num_layers); the generator yields after every
    training and evaluation window, and on a GPU while the population's queued work runs before
    its results are read, so that one thread can advance several populations in turn without
    ever waiting on one; it returns one Result per setting, in order.

    On CUDA, `capture` replays each window's step from a CUDA graph (see `steps`); `engine`
    (`model.ENGINES`, default `model.default_engine`) picks how each layer runs. `stop_at`
    ends a member's training once its validation metric reaches that value (accuracy at least,
    or nll at most): the memorization filter only asks whether a cell gets to 95%.
    `loss_normalization` (`steps.LOSS_NORMALIZATIONS`) says what a window's summed loss is divided
    by: the minibatch size (the paper's words) or its scored targets. With a `mixer`, its windows
    train in steps shared with other populations (`steps.Mixer`), to the same numbers."""
    started = time.perf_counter()
    device = torch.device(device)
    steps = population_steps(graph, task, settings, hidden_size, device=device,
                             batch_size=batch_size, num_steps=num_steps, capture=capture,
                             engine=engine, loss_normalization=loss_normalization, mixer=mixer)
    try:
        K = len(settings)
        schedules = [schedule_for(schedule, s) for s in settings]
        active = [True] * K
        status = [OK] * K
        reasons: list[str | None] = [None] * K
        best_valid: list[dict[str, float]] = [{} for _ in range(K)]
        best_test: list[dict[str, float]] = [{} for _ in range(K)]
        histories: list[list[dict[str, float]]] = [[] for _ in range(K)]
        epochs_run = [0] * K
        tokens = [0] * K  # timesteps of training data each member has read

        epoch = 0
        while any(active) and (max_epochs is None or epoch < max_epochs):
            rates = [sch.learning_rate if a else 0.0 for sch, a in zip(schedules, active)]
            training = sum(active)

            windows = [0]

            def on_window(window: int) -> None:
                windows[0] = window
                if on_progress is not None:
                    on_progress(Progress(epoch + 1, window, training))

            for _ in steps.train_windows(epoch, rates, on_window):
                yield
            yield from steps.settled()
            finite = steps.finite.tolist()
            valid = yield from steps.evaluation_windows("valid")
            improved = []
            for k in range(K):
                if not active[k]:
                    continue
                epochs_run[k] = epoch + 1
                tokens[k] += windows[0] * batch_size * num_steps
                histories[k].append({"epoch": epoch + 1, "learning_rate": rates[k],
                                     **{name: values[k] for name, values in valid.items()}})
                loss = valid["nll"][k]
                if not finite[k] or not math.isfinite(loss):
                    active[k], status[k] = False, DIVERGED
                    reasons[k] = f"the training loss became NaN or infinite in epoch {epoch + 1}"
                    continue
                schedules[k].end_epoch(loss)
                reached = stop_at is not None and (
                    valid[task.metric][k] <= stop_at if task.metric in LOWER_IS_BETTER
                    else valid[task.metric][k] >= stop_at)
                # The epoch that reaches `stop_at` is the one reported, even if an earlier epoch had
                # a lower validation loss: the filter asks whether the cell got there.
                if schedules[k].is_best or reached:
                    best_valid[k] = {name: values[k] for name, values in valid.items()}
                    improved.append(k)
                if schedules[k].done or reached:
                    active[k] = False
            if improved:
                test = yield from steps.evaluation_windows("test")
                for k in improved:
                    best_test[k] = {name: values[k] for name, values in test.items()}
            epoch += 1

        wall = time.perf_counter() - started
        return [
            Result(
                task=task.name, settings=s, hidden_size=hidden_size, num_parameters=num_parameters,
                metric=task.metric, status=status[k], reason=reasons[k], valid=best_valid[k],
                test=best_test[k], epochs=epochs_run[k], wall_seconds=wall, device=str(device),
                history=tuple(histories[k]), tokens=tokens[k],
            )
            for k, s in enumerate(settings)
        ]
    finally:
        if mixer is not None:
            mixer.leave(steps)  # and the CUDA graphs it shared
