"""Cutting token streams into the paper's windows: minibatch B, unrolled T steps (§3.5).

"We trained on sequences of length greater than 35 by moving the minibatch sequentially through
the sequence, and ensuring that the hidden state of the RNN is initialized by the last hidden state
of the RNN in the previous minibatch." So a split is laid out as B rows, each row one stream, and
window k of row b is the k-th slice of T timesteps of that row: window k+1 continues where window k
stopped. Three layouts build on this:

- `stream_rows`: one long stream cut into B contiguous rows (PTB, as in Zaremba et al. 2014);
- synthetic tasks build B independent row streams of concatenated samples themselves;
- `pack_pieces`: whole music pieces placed on rows, each padded to a multiple of T so that a piece
  always starts at a window boundary, where the state can be reset.

Only token streams are windowed here; music frames are gathered by `cellsearch.tasks.music`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from cellsearch.errors import UserError
from cellsearch.tasks.base import Batch


def stream_rows(stream: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut `stream` (N,) into (B, N // B) contiguous rows; the last N mod B tokens are dropped."""
    row_length = len(stream) // batch_size
    if row_length < 2:
        raise UserError(
            f"a stream of {len(stream)} tokens is too short for {batch_size} rows "
            "of at least 2 tokens; use a smaller batch size"
        )
    return stream[: batch_size * row_length].reshape(batch_size, row_length)


def window_count(row_length: int, num_steps: int) -> int:
    """Windows needed to predict tokens 1..L-1 of a row of L tokens, the last one padded."""
    return -(-(row_length - 1) // num_steps)


def token_windows(rows: np.ndarray, scored: np.ndarray, num_steps: int) -> Iterator[Batch]:
    """Yield the windows of `rows` (B, L): inputs are tokens t, targets tokens t+1.

    `scored` (B, L) bool says whether predicting token j of a row counts (as a target); the first
    token of a row is never a target. The last window is padded with token 0 and mask 0, so every
    window has the full (T, B) shape and every scored token of the rows is scored exactly once.
    """
    B, L = rows.shape
    T = num_steps
    windows = window_count(L, T)
    padded_length = windows * T + 1
    if padded_length > L:
        padding = padded_length - L
        rows = np.pad(rows, ((0, 0), (0, padding)))
        scored = np.pad(scored, ((0, 0), (0, padding)))
    rows = np.ascontiguousarray(rows.T, dtype=np.int64)  # (L', B), time-major like the batches
    mask = np.ascontiguousarray(scored.T, dtype=np.float32)
    for k in range(windows):
        start = k * T
        yield Batch(
            inputs=rows[start : start + T],  # (T, B)
            targets=rows[start + 1 : start + T + 1],  # (T, B)
            mask=mask[start + 1 : start + T + 1],  # (T, B): the mask belongs to the target
            reset=np.full(B, k == 0),
        )


def pad_rows(streams: Sequence[np.ndarray], flags: Sequence[np.ndarray]):
    """Stack row streams of unequal length into (B, L) arrays, padding with token 0, unscored."""
    length = max(len(stream) for stream in streams)
    rows = np.zeros((len(streams), length), dtype=np.int64)
    scored = np.zeros((len(streams), length), dtype=bool)
    for b, (stream, flag) in enumerate(zip(streams, flags, strict=True)):
        rows[b, : len(stream)] = stream
        scored[b, : len(flag)] = flag
    return rows, scored


def pack_pieces(window_counts: Sequence[int], batch_size: int) -> list[list[int]]:
    """Assign pieces (piece i takes `window_counts[i]` windows) to B rows.

    Longest piece first, each to the row that currently ends earliest (the LPT rule), so rows
    end close together and little padding follows the shorter rows; going in the given order
    instead lets one long late piece leave most rows idle (40% padding on Piano-midi.de). Within a
    row, pieces keep their order in the input, so a caller shuffling the input still varies it.
    """
    rows: list[list[int]] = [[] for _ in range(batch_size)]
    ends = np.zeros(batch_size, dtype=np.int64)
    # A stable sort: pieces of equal length keep the caller's order.
    for piece in np.argsort(-np.asarray(window_counts, dtype=np.int64), kind="stable"):
        row = int(np.argmin(ends))
        rows[row].append(int(piece))
        ends[row] += window_counts[piece]
    return [sorted(row) for row in rows]
