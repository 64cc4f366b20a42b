"""The paper's problems (§3.1, §3.5) as tasks the trainer can walk through window by window.

    memorize                       5 letters read, then reproduced (the §3.1 filter)
    arith, xml                     generated character streams (§3.5)
    ptb                            word-level Penn Treebank (§3.5)
    nottingham, piano-midi,        polyphonic music, 88 sigmoid outputs (§3.5, Table 2)
    jsb, musedata

`get_task(name, data_dir, seed)` builds one; the `Task` interface and its `Batch` windows are in
`cellsearch.tasks.base`, the metrics over model outputs in `cellsearch.tasks.metrics`, data files
in `cellsearch.tasks.files`. Nothing here knows about models or the search.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os

from cellsearch.errors import UserError
from cellsearch.evaluation import tasks as catalog
from cellsearch.tasks.base import SPLITS, Batch, Task
from cellsearch.tasks.music import NOTES, Music
from cellsearch.tasks.ptb import PennTreebank

__all__ = ["SPLITS", "Batch", "Task", "get_task", "shared_task", "task_names"]


def _factory(entry: catalog.TaskEntry) -> type[Task]:
    module, _, name = entry.factory.partition(":")
    return getattr(importlib.import_module(module), name)


# name -> (class, fixed constructor arguments), from the catalog (`evaluation.tasks`), in its order
_TASKS: dict[str, tuple[type[Task], dict]] = {
    entry.name: (_factory(entry), dict(entry.options)) for entry in catalog.ENTRIES
}


# The word types of Mikolov et al.'s PTB training file (what `PennTreebank` reads from it).
PTB_VOCABULARY = 10_000


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def model_sizes(name: str) -> tuple[int, int, str]:
    """(input size, output size, input kind) of a model for task `name`, known without reading
    its data (for checking parameter budgets before anything runs)."""
    cls = _TASKS[name][0]
    if cls is Music:
        return NOTES, NOTES, "linear"
    if cls is PennTreebank:
        return PTB_VOCABULARY, PTB_VOCABULARY, "embedding"
    return len(cls.vocabulary), len(cls.vocabulary), "embedding"


def task_options(name: str) -> list[str]:
    """The constructor options task `name` takes (e.g. `epoch_windows`, `valid_samples`)."""
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; the tasks are {', '.join(task_names())}")
    return sorted(set(inspect.signature(_TASKS[name][0]).parameters) - {"name", "data_dir", "seed"})


def get_task(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, **options
) -> Task:
    """The task called `name`, its data read from `data_dir` (see `files.data_root`).

    `seed` selects the training stream of the synthetic tasks and the piece order of the music
    tasks; it never changes a valid or test set. `options` go to the task's constructor, e.g.
    `epoch_windows` (every task: training windows per epoch, a cheap setting for tests and demos)
    or `valid_samples` (synthetic tasks). Data files are checked, and downloaded when missing,
    here, so a task that is returned has its data.
    """
    accepted = task_options(name)
    cls, fixed = _TASKS[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(
            f"task {name} has no option {', '.join(unknown)}; its options are {', '.join(accepted)}"
        )
    if _reads_files(name):
        fixed = {**fixed, "data_dir": data_dir}
    return cls(**fixed, seed=seed, **options)


def shared_task(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0,
                **options) -> Task:
    """`get_task`, but a synthetic task is built once per process for the same arguments and
    then shared: a search evaluates every candidate on the same few tasks, and a synthetic task
    keeps the training rows it drew for its latest epochs (drawing an epoch's rows takes a
    fraction of a second that the first epoch of every evaluation would otherwise wait for).
    Synthetic tasks are safe to share between threads: their rows are drawn under a lock. Tasks
    that read files are built anew each time, so they follow the data directory of the call."""
    if name not in _TASKS or _reads_files(name):
        return get_task(name, data_dir, seed, **options)  # (for an unknown name, its error)
    return _shared_synthetic_task(name, seed, tuple(sorted(options.items())))


def _reads_files(name: str) -> bool:
    """Whether task `name` reads data files (the synthetic tasks generate theirs)."""
    return "data_dir" in inspect.signature(_TASKS[name][0]).parameters


@functools.lru_cache(maxsize=8)
def _shared_synthetic_task(name: str, seed: int, options: tuple) -> Task:
    return get_task(name, seed=seed, **dict(options))
