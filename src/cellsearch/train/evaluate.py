"""`evaluate(graph, task, settings)`: train every setting and return its Result.

Settings are grouped into populations by shape (number of layers and parameter budget, hence the
hidden size), each trained at once by `train_population`. A population that fails as a whole
(out of memory, a bad device) yields failed Results with the reason instead of an exception, so
a search never stops because one evaluation broke.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Generator, Sequence

import torch

from cellsearch.cells.graph import CellGraph
from cellsearch.errors import UserError, gathered
from cellsearch.evaluation.budget import hidden_size_for_budget, parameter_count
from cellsearch.evaluation.result import FAILED, Result
from cellsearch.evaluation.settings import LOSS_NORMALIZATIONS, Settings
from cellsearch.tasks import Task, get_task, shared_task, task_options
from cellsearch.train.model import default_engine, input_kind
from cellsearch.train.packing import population_limit
from cellsearch.train.steps import Mixer
from cellsearch.train.trainer import Progress, population_run, train_population


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when present; an unavailable device is a UserError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for, but this machine has no CUDA GPU")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def check_training(problems: list[str], device: str, tasks: Sequence[str],
                   data_dir: str | os.PathLike | None) -> None:
    """Adds to `problems` what would fail every evaluation on `device` of `tasks`: the device,
    and each task's data (downloaded now when missing, once, rather than by each worker)."""
    gathered(problems, resolve_device, device)
    for task in dict.fromkeys(tasks):
        gathered(problems, get_task, task, data_dir)


def model_shape(graph: CellGraph, task: Task, settings: Settings) -> tuple[int, int]:
    """(hidden size, exact parameter count) for a setting's budget (§3.7: binary search)."""
    shape = dict(
        matrices_per_layer=graph.num_matrices,
        biases_per_layer=graph.num_biases,
        num_layers=settings.num_layers,
        input_size=task.input_size,
        output_size=task.output_size,
        input_kind=input_kind(task),
    )
    hidden = hidden_size_for_budget(settings.num_parameters, **shape)
    return hidden, parameter_count(hidden, **shape)


def evaluate(
    graph: CellGraph,
    task: str | Task,
    settings: Sequence[Settings],
    *,
    device: str = "cpu",
    data_dir: str | os.PathLike | None = None,
    schedule: str = "search",
    max_epochs: int | None = None,
    epoch_windows: int | None = None,
    valid_samples: int | None = None,
    test_samples: int | None = None,
    data_seed: int = 0,
    population_size: int | None = None,
    capture: bool = True,
    engine: str | None = None,
    stop_at: float | None = None,
    loss_normalization: str = "minibatch",
    on_progress: Callable[[Progress], None] | None = None,
) -> list[Result]:
    """Train each setting of `graph` on `task`; one Result per setting, in the given order.

    `max_epochs` caps every schedule; `epoch_windows` shrinks a task's epoch and
    `valid_samples`/`test_samples` a synthetic task's fixed sets (ignored for ptb and music;
    cheap configurations for tests and demos); `population_size` caps K (by default, on CUDA, as
    many as fit in half the free memory: `packing`); `data_seed` selects the training stream,
    shared by all members; `capture` replays training steps from CUDA graphs on a GPU and
    `engine` picks how each layer runs (`model.ENGINES`; by default generated kernels on CUDA,
    eager on CPU); `stop_at` ends a member once its validation metric reaches it;
    `loss_normalization` divides a window's summed loss by the minibatch size ("minibatch",
    §3.7) or by its scored targets ("targets"; docs/fidelity.md). On CUDA, matmuls use TF32 (as
    the speed targets assume).
    """
    _check_normalization(loss_normalization)
    if not settings:
        return []
    task, torch_device, engine, shapes = _populations(
        graph, task, settings, device, engine, data_dir, data_seed, population_size,
        dict(epoch_windows=epoch_windows, valid_samples=valid_samples, test_samples=test_samples),
    )
    # On a GPU, the populations of different shapes train at the same time, each shape in its
    # own thread on its own CUDA stream (one small population leaves most of the GPU idle); the
    # chunks of one shape, when it does not fit at once, train one after another.
    concurrent = torch_device.type == "cuda" and len(shapes) > 1

    def train(chunk: list[int], hidden: int, count: int) -> list[Result]:
        members = [settings[i] for i in chunk]
        try:
            return train_population(
                graph, task, members, hidden, count, device=torch_device,
                schedule=schedule, max_epochs=max_epochs, capture=capture, engine=engine,
                stop_at=stop_at, loss_normalization=loss_normalization, on_progress=on_progress,
            )
        except Exception as error:  # noqa: BLE001 - a broken run is a recorded result (ARCHITECTURE)
            return _failed(task, members, hidden, count, error, torch_device)

    def train_shape(populations) -> list[tuple[list[int], list[Result]]]:
        with torch.cuda.stream(torch.cuda.Stream(torch_device)) if concurrent else nullcontext():
            return [(chunk, train(chunk, hidden, count)) for chunk, hidden, count in populations]

    if concurrent:
        with ThreadPoolExecutor(max_workers=len(shapes)) as pool:
            trained = [pair for pairs in pool.map(train_shape, shapes) for pair in pairs]
    else:
        trained = [pair for populations in shapes for pair in train_shape(populations)]
    return _in_order(len(settings), trained)


def evaluation(
    graph: CellGraph,
    task: str | Task,
    settings: Sequence[Settings],
    *,
    device: str = "cpu",
    data_dir: str | os.PathLike | None = None,
    schedule: str = "search",
    max_epochs: int | None = None,
    epoch_windows: int | None = None,
    valid_samples: int | None = None,
    test_samples: int | None = None,
    data_seed: int = 0,
    population_size: int | None = None,
    capture: bool = True,
    engine: str | None = None,
    stop_at: float | None = None,
    loss_normalization: str = "minibatch",
    mixer: Mixer | None = None,
) -> Generator[None, None, list[Result]]:
    """`evaluate` as a generator that yields after every training window of its populations,
    which it advances in turn, each shape on its own CUDA stream on a GPU (a shape's populations,
    when it needs several, one after another, as `evaluate` trains them); it returns the Results.
    One thread can so advance many evaluations together (`executors.interleaved`): their windows
    queue on different streams, which the GPU may run at once, and no population waits for
    another to finish. With a `mixer`, every population's windows instead train in steps shared
    with all others' (`steps.Mixer`), on the current stream. The Results are those `evaluate`
    gives."""
    _check_normalization(loss_normalization)
    if not settings:
        return []
    task, torch_device, engine, shapes = _populations(
        graph, task, settings, device, engine, data_dir, data_seed, population_size,
        dict(epoch_windows=epoch_windows, valid_samples=valid_samples, test_samples=test_samples),
        share_memory=True,
    )
    def lane(populations) -> Generator[None, None, list[tuple[list[int], list[Result]]]]:
        """The populations of one shape, one after another (each is sized to the shape's share
        of the memory), a window at a time."""
        done = []
        for chunk, hidden, count in populations:
            members = [settings[i] for i in chunk]
            try:
                results = yield from population_run(
                    graph, task, members, hidden, count, device=torch_device, schedule=schedule,
                    max_epochs=max_epochs, capture=capture, engine=engine, stop_at=stop_at,
                    loss_normalization=loss_normalization, mixer=mixer,
                )
            except Exception as error:  # noqa: BLE001 - a broken run is a recorded result
                results = _failed(task, members, hidden, count, error, torch_device)
            done.append((chunk, results))
        return done

    # [stream or None, the shape's lane]: the shapes train at once, each on its own stream
    streams = torch_device.type == "cuda" and mixer is None
    lanes = [[torch.cuda.Stream(torch_device) if streams else None, lane(populations)]
             for populations in shapes]
    trained: list[tuple[list[int], list[Result]]] = []
    while lanes:
        for entry in list(lanes):
            stream, run = entry
            try:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    next(run)
            except StopIteration as stop:
                trained.extend(stop.value)
                lanes.remove(entry)
        if lanes:
            yield
    return _in_order(len(settings), trained)


def _check_normalization(loss_normalization: str) -> None:
    if loss_normalization not in LOSS_NORMALIZATIONS:
        raise UserError(
            f"loss_normalization must be one of {', '.join(LOSS_NORMALIZATIONS)},"
            f" got {loss_normalization!r}"
        )


def _populations(graph, task, settings, device, engine, data_dir, data_seed, population_size,
                 sizes, share_memory=False):
    """(the task, the device, the engine, per shape [(setting indices, hidden size, parameter
    count), ...]): settings grouped by shape, each shape cut into populations that fit on the
    device (into its share of the memory, when the shapes train at once or `share_memory`)."""
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    # chosen once, before any population starts (its check runs kernels of its own)
    engine = engine or default_engine(torch_device)
    if isinstance(task, str):
        # ptb and music have fixed, published splits: no valid_samples or test_samples
        options = {name: value for name, value in sizes.items()
                   if value and name in task_options(task)}
        task = shared_task(task, data_dir=data_dir, seed=data_seed, **options)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, setting in enumerate(settings):
        groups.setdefault((setting.num_layers, setting.num_parameters), []).append(index)
    shared = torch_device.type == "cuda" and (len(groups) > 1 or share_memory)
    shapes = []
    for indices in groups.values():
        hidden, count = model_shape(graph, task, settings[indices[0]])
        fits = population_limit(graph, count, hidden, settings[indices[0]].num_layers,
                                task.output_size, torch_device)
        if fits and shared:
            fits = max(1, fits // len(groups))
        step = population_size or min(len(indices), fits or len(indices))
        shapes.append([(indices[i:i + step], hidden, count) for i in range(0, len(indices), step)])
    return task, torch_device, engine, shapes


def _failed(task, members, hidden, count, error, device) -> list[Result]:
    """One failed Result per member of a population that broke, with the reason."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return [
        Result(task=task.name, settings=s, hidden_size=hidden, num_parameters=count,
               metric=task.metric, status=FAILED, reason=reason, device=str(device))
        for s in members
    ]


def _in_order(count: int, trained: list[tuple[list[int], list[Result]]]) -> list[Result]:
    """The Results of the populations' settings, put back in the order they were given."""
    results: list[Result | None] = [None] * count
    for chunk, outcome in trained:
        for i, result in zip(chunk, outcome):
            results[i] = result
    return results
