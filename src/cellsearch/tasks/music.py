"""The polyphonic music tasks (Boulanger-Lewandowski et al. 2012): Nottingham, Piano-midi.de,
JSB Chorales and MuseData, used in §3.5 and Table 2.

Each timestep is an 88-dim binary frame, column j being MIDI note 21 + j; the model predicts the
next frame with 88 independent sigmoids. The metric is the negative log-likelihood per timestep
(summed over the 88 notes, averaged over predicted timesteps), as in Table 2, plus frame accuracy.

Data come from the `.mat` files of music/SOURCES.md (checked against their sha256) or, when a
user has only those, the original Python-2 pickles (dicts of train/valid/test lists of sequences
of lists of MIDI numbers).

Batching: each row is a sequence of whole pieces. A piece of n frames is predicted from a silent
(all-zero) frame followed by its first n-1 frames, so all n frames are scored and the scored count
is the split's number of timesteps. It is padded (mask 0) to a multiple of T, so each piece starts
at a window boundary, where `reset` is set for its row. Pieces are spread over rows longest first
(`windows.pack_pieces`); training pieces are shuffled each epoch with (seed, epoch), which varies
both which pieces share a row and their order within it. The valid and test layouts are fixed.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cellsearch.errors import UserError
from cellsearch.tasks import files
from cellsearch.tasks.base import (
    SPLITS,
    Batch,
    Task,
    check_batch_arguments,
    check_epoch_windows,
)
from cellsearch.tasks.windows import pack_pieces

NOTES = 88
LOWEST_NOTE = 21  # MIDI number of column 0 (A0); the highest is 108 (C8)
_MAT_VARIABLES = {"train": "traindata", "valid": "validdata", "test": "testdata"}


def load_mat(path: Path) -> dict[str, list[np.ndarray]]:
    """The splits of a `.mat` file: lists of (T_i, 88) uint8 piano-rolls."""
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types for a damaged file
        raise UserError(f"cannot read {path} as a MATLAB file: {error}") from error
    splits = {}
    for split, variable in _MAT_VARIABLES.items():
        if variable not in content:
            raise UserError(f"{path} has no variable {variable!r}; it is not a music data file")
        splits[split] = [np.asarray(roll, dtype=np.uint8) for roll in content[variable].ravel()]
        for roll in splits[split]:
            if roll.ndim != 2 or roll.shape[1] != NOTES or roll.max(initial=0) > 1:
                raise UserError(f"{path}: {variable} holds a {roll.shape} array, not binary T x 88")
    return splits


class _PlainUnpickler(pickle.Unpickler):
    """Loads plain containers and numpy numbers only: a pickle can otherwise run any code."""

    _ALLOWED = {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    """The splits of an original Boulanger-Lewandowski pickle, as (T_i, 88) uint8 piano-rolls."""
    try:
        with open(path, "rb") as file:
            content = _PlainUnpickler(file, encoding="latin1").load()
    except Exception as error:  # truncated or foreign pickles fail in many ways
        raise UserError(f"cannot read {path} as a music pickle: {error}") from error
    if not isinstance(content, dict) or not set(SPLITS) <= content.keys():
        raise UserError(f"{path} is not a dict with train/valid/test sequences")
    splits = {}
    for split in SPLITS:
        splits[split] = []
        for sequence in content[split]:
            roll = np.zeros((len(sequence), NOTES), dtype=np.uint8)
            for t, notes in enumerate(sequence):
                columns = np.asarray(notes, dtype=np.int64).ravel() - LOWEST_NOTE
                if columns.size and (columns.min() < 0 or columns.max() >= NOTES):
                    raise UserError(f"{path}: a {split} note lies outside MIDI 21..108")
                roll[t, columns] = 1
            splits[split].append(roll)
    return splits


def load_pieces(name: str, root: Path) -> tuple[dict[str, list[np.ndarray]], Path]:
    """The splits of music task `name` and the file they came from.

    The checksummed `.mat` file is preferred; a user's original pickle is used when the `.mat` is
    absent; when both are absent the `.mat` is downloaded.
    """
    data_file = files.MUSIC_FILES[name]
    mat_path = root / data_file.path
    pickle_path = root / files.MUSIC_PICKLES[name]
    if not mat_path.exists() and pickle_path.exists():
        return load_pickle(pickle_path), pickle_path
    (mat_path,) = files.ensure_files(root, [data_file])
    return load_mat(mat_path), mat_path


def _gather(frames, input_index, target_index, mask, starts, T) -> Iterator[Batch]:
    """Yield the windows of a layout, turning frame indices into float frames one window at a
    time (a whole split as float32 would take up to 100 MB)."""
    for k in range(len(starts)):
        window = slice(k * T, (k + 1) * T)
        yield Batch(
            inputs=frames[input_index[:, window].T].astype(np.float32),  # (T, B, 88)
            targets=frames[target_index[:, window].T].astype(np.float32),  # (T, B, 88)
            mask=np.ascontiguousarray(mask[:, window].T),  # (T, B)
            reset=starts[k],  # (B,)
        )


class Music(Task):
    output_kind = "sigmoid"
    metric = "nll"
    input_size = output_size = NOTES

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike | None = None,
        seed: int = 0,
        epoch_windows: int | None = None,
    ):
        """`epoch_windows` caps the training windows of an epoch (a cheap setting for tests and
        demos; the pieces are shuffled first); by default an epoch holds every training piece."""
        self.epoch_windows = check_epoch_windows(epoch_windows)
        self.name = name
        self.seed = seed
        self.pieces, self.source = load_pieces(name, files.data_root(data_dir))
        self._frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def frames(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The frames of `split` in one (N + 1, 88) array, the last one silent; piece offsets."""
        if split not in self._frames:
            pieces = self.pieces[split]
            silent = np.zeros((1, NOTES), dtype=np.uint8)
            offsets = np.cumsum([0] + [len(piece) for piece in pieces])[:-1]
            self._frames[split] = (np.concatenate([*pieces, silent]), offsets)
        return self._frames[split]

    def batches(
        self, split: str, batch_size: int = 20, num_steps: int = 35, epoch: int = 0
    ) -> Iterator[Batch]:
        check_batch_arguments(split, batch_size, num_steps)
        T = num_steps
        frames, offsets = self.frames(split)
        silent = len(frames) - 1
        lengths = [len(piece) for piece in self.pieces[split]]
        order = np.arange(len(lengths))
        if split == "train":
            order = np.random.default_rng([self.seed, epoch]).permutation(len(lengths))
        counts = [-(-lengths[piece] // T) for piece in order]  # windows per piece
        rows = pack_pieces(counts, batch_size)
        W = max(sum(counts[k] for k in row) for row in rows)  # windows in this pass
        if W == 0:
            raise UserError(f"{self.source}: the {split} split of {self.name} has no frames")
        # Per row and timestep: which frame is the input, which the target (silent = padding).
        input_index = np.full((batch_size, W * T), silent, dtype=np.int64)
        target_index = np.full((batch_size, W * T), silent, dtype=np.int64)
        mask = np.zeros((batch_size, W * T), dtype=np.float32)
        starts = np.zeros((W, batch_size), dtype=bool)
        for b, row in enumerate(rows):
            position = 0
            for k in row:
                n, offset = lengths[order[k]], offsets[order[k]]
                if n:
                    starts[position // T, b] = True
                    input_index[b, position + 1 : position + n] = offset + np.arange(n - 1)
                    target_index[b, position : position + n] = offset + np.arange(n)
                    mask[b, position : position + n] = 1
                position += counts[k] * T
        starts[0] = True  # every pass starts from a zero state, even on rows with no piece
        if split == "train" and self.epoch_windows is not None:
            starts = starts[: self.epoch_windows]
        return _gather(frames, input_index, target_index, mask, starts, T)

    def samples(self, count: int, seed: int = 0) -> list[str]:
        """`count` random training pieces: length, then the notes of their first 16 frames."""
        pieces = self.pieces["train"]
        count = min(count, len(pieces))
        chosen = np.random.default_rng(seed).choice(len(pieces), size=count, replace=False)
        lines = []
        for i in chosen:
            frames = [
                ".".join(str(note + LOWEST_NOTE) for note in np.flatnonzero(frame)) or "-"
                for frame in pieces[i][:16]
            ]
            lines.append(f"train piece {i} ({len(pieces[i])} steps): " + " ".join(frames) + " ...")
        return lines

    def describe(self) -> dict:
        splits = {}
        for split, pieces in self.pieces.items():
            lengths = [len(piece) for piece in pieces]
            splits[split] = {
                "sequences": len(pieces),
                "steps": sum(lengths),
                "shortest": min(lengths, default=0),
                "longest": max(lengths, default=0),
            }
        used = np.zeros(NOTES, dtype=bool)
        for piece in self.pieces["train"]:
            used |= piece.any(axis=0)
        notes = np.flatnonzero(used) + LOWEST_NOTE
        return {
            "task": self.name,
            "vocabulary": f"{NOTES} notes (MIDI {LOWEST_NOTE}..{LOWEST_NOTE + NOTES - 1}), "
            "one sigmoid each",
            "training notes": f"MIDI {notes.min()}..{notes.max()}" if notes.size else "none",
            "source": str(self.source),
            "splits": splits,
        }
