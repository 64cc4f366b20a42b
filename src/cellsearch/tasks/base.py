"""The interface every task offers the training engine: `Task` and the `Batch` it yields.

A task owns its data (generated or read from files), its batching into windows of the paper's
unrolled length (§3.5) and a human-readable view for `cellsearch data`. It knows nothing of models:
the metrics over model outputs live in `cellsearch.tasks.metrics`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cellsearch.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Batch:
    """One window of `num_steps` timesteps for `batch_size` rows, time-major.

    inputs:  (T, B) int64 token ids, or (T, B, 88) float32 piano-roll frames for music
    targets: (T, B) int64 next tokens, or (T, B, 88) float32 next frames
    mask:    (T, B) float32, 1 where the prediction is scored (loss and metric), 0 elsewhere
             (padding, distractor positions, the read phase of memorize ...)
    reset:   (B,) bool, True where the row starts a new sequence in this window: the model must
             start that row from a zero state instead of the previous window's final state.
             Every task sets it for all rows in the first window of a split, so a trainer that
             carries state across epochs or splits still starts each pass from zero.
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    reset: np.ndarray


class Task(abc.ABC):
    """A problem of §3.5, seen by the trainer as a sequence of windows per split and epoch.

    Lifecycle: `cellsearch.tasks.get_task` builds a task once (reading or checking its data
    files); the trainer then calls `batches(split, ...)` once per pass over a split, in order,
    carrying each row's final state into the next window unless `reset` says otherwise.
    `describe` and `samples` serve `cellsearch data stats` and `cellsearch data sample`.
    """

    name: str
    output_kind: str  # "softmax" (targets are token ids) or "sigmoid" (targets are 88-dim frames)
    input_size: int  # vocabulary size, or 88 for music
    output_size: int  # vocabulary size, or 88 for music
    metric: str  # "accuracy" (higher is better) or "nll" (lower is better)

    @abc.abstractmethod
    def batches(
        self, split: str, batch_size: int = 20, num_steps: int = 35, epoch: int = 0
    ) -> Iterator[Batch]:
        """Yield one pass over `split` ("train", "valid" or "test") as consecutive windows.

        `epoch` selects the training data of that epoch (fresh samples for synthetic tasks, a
        fresh piece order for music); it does not change the valid and test sets.
        """

    @abc.abstractmethod
    def describe(self) -> dict:
        """Split sizes and vocabulary: `{"task": ..., "vocabulary": ..., "splits": {split: {...}}}`
        plus any other top-level facts worth a line in `cellsearch data stats`."""

    @abc.abstractmethod
    def samples(self, count: int, seed: int = 0) -> list[str]:
        """`count` samples drawn with `seed`, each rendered as one line of text."""


def check_batch_arguments(split: str, batch_size: int, num_steps: int) -> None:
    """Reject a bad split name or window size with a message naming the bad value."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if num_steps < 1:
        raise UserError(f"the number of unrolled steps must be at least 1, got {num_steps}")


def check_epoch_windows(epoch_windows: int | None) -> int | None:
    """Reject a cap on the training windows per epoch that is not a positive number."""
    if epoch_windows is not None and epoch_windows < 1:
        raise UserError(f"epoch_windows must be at least 1, got {epoch_windows}")
    return epoch_windows
