"""What the generated character tasks (memorize, arith, xml) share: streams of samples.

A synthetic task only says how to draw one sample (`generate`); this module turns samples into the
windows of §3.5. Each sample is a string ending in the task's `boundary` character, with one
contiguous range of characters whose prediction is scored. A row stream is the boundary character
followed by whole samples, so the stream reads as if an earlier sample had just ended and every
character of every sample is a prediction target. The B rows are independent streams and never
need a state reset after the first window.

Training data are fresh every epoch: epoch e draws from a generator seeded by (task seed, e) until
each row holds `epoch_windows` windows; the last sample of a row is cut where the epoch ends. The
valid and test sets are fixed lists of whole samples, drawn from seeds that do not depend on the
task seed, so every model of a search is compared on the same data; they are dealt to rows in
contiguous chunks and padded at the end with mask 0, so their scored characters do not depend on
the batch size or unrolled length.
"""

from __future__ import annotations

import abc
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from typing import NamedTuple

import numpy as np

from cellsearch.errors import UserError
from cellsearch.tasks.base import (
    Batch,
    Task,
    check_batch_arguments,
    check_epoch_windows,
)
from cellsearch.tasks.windows import pad_rows, token_windows

# Seed-sequence tags keeping the training stream apart from the two fixed sets.
_TRAIN_TAG, _VALID_TAG, _TEST_TAG = 0, 1, 2
LETTERS = np.array(list(string.ascii_lowercase))  # for drawing random letters in one call
# Epochs of training rows kept (an arith epoch at batch 20 is ~6 MB): enough that populations of
# one evaluation, however far apart their paces, rarely draw an epoch twice.
ROWS_KEPT = 32


class Sample(NamedTuple):
    """One sample: its characters, and the range [scored_start, scored_stop) that is scored."""

    text: str
    scored_start: int
    scored_stop: int


class SyntheticTask(Task):
    """A character-level task whose samples come from a seeded generator.

    Subclasses set `name`, `vocabulary` (a string: token id i is character i), `boundary` (the
    last character of every sample), the fixed-set seed `fixed_seed`, the sizes a constructor
    argument left as None falls back to (`default_epoch_windows`, `default_valid_samples`,
    `default_test_samples`), and implement `generate`.
    """

    output_kind = "softmax"
    metric = "accuracy"
    vocabulary: str
    boundary: str
    fixed_seed: int
    default_epoch_windows: int
    default_valid_samples: int
    default_test_samples: int

    def __init__(
        self,
        seed: int = 0,
        epoch_windows: int | None = None,
        valid_samples: int | None = None,
        test_samples: int | None = None,
    ):
        if epoch_windows is None:
            epoch_windows = self.default_epoch_windows
        if valid_samples is None:
            valid_samples = self.default_valid_samples
        if test_samples is None:
            test_samples = self.default_test_samples
        check_epoch_windows(epoch_windows)
        for label, value in (("valid_samples", valid_samples), ("test_samples", test_samples)):
            if value < 1:
                raise UserError(f"{self.name}: {label} must be at least 1, got {value}")
        self.seed = seed
        self.epoch_windows = epoch_windows
        self.fixed_sizes = {"valid": valid_samples, "test": test_samples}
        self.input_size = self.output_size = len(self.vocabulary)
        # Character code -> token id; 255 marks characters outside the vocabulary.
        self._lookup = np.full(256, 255, dtype=np.uint8)
        self._lookup[np.frombuffer(self.vocabulary.encode("ascii"), dtype=np.uint8)] = np.arange(
            len(self.vocabulary)
        )
        self._fixed_sets: dict[str, list[Sample]] = {}
        # Every population of an evaluation (one per model shape, trained side by side) walks
        # the same epochs at its own pace: each epoch's rows are drawn once, by whichever
        # population gets there first, and kept for the ones behind it.
        self._rows: OrderedDict[tuple, Future] = OrderedDict()
        self._rows_lock = threading.Lock()

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator) -> Sample:
        """Draw one sample; its text ends with `self.boundary`."""

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int64) of `text`; every character must be in the vocabulary."""
        ids = self._lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        if (ids == 255).any():
            bad = sorted({c for c in text if c not in self.vocabulary})
            raise ValueError(f"{self.name}: characters outside the vocabulary: {bad}")
        return ids.astype(np.int64)

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.vocabulary[i] for i in np.asarray(ids).ravel())

    def _stream(self, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """The row stream of `samples`: ids (L,) and whether each token is a scored target (L,)."""
        text = self.boundary + "".join(s.text for s in samples)
        flags = "0" + "".join(
            "0" * s.scored_start
            + "1" * (s.scored_stop - s.scored_start)
            + "0" * (len(s.text) - s.scored_stop)
            for s in samples
        )
        return self.encode(text), np.frombuffer(flags.encode("ascii"), dtype=np.uint8) == ord("1")

    # -- data -------------------------------------------------------------------------------

    def fixed_set(self, split: str) -> list[Sample]:
        """The fixed valid or test samples (the same for every task seed), drawn once."""
        if split not in self._fixed_sets:
            tag = _VALID_TAG if split == "valid" else _TEST_TAG
            rng = np.random.default_rng([self.fixed_seed, tag])
            self._fixed_sets[split] = [self.generate(rng) for _ in range(self.fixed_sizes[split])]
        return self._fixed_sets[split]

    def training_rows(self, batch_size: int, num_steps: int, epoch: int):
        """`_training_rows`, drawn once per epoch even when several threads ask at once; the
        next epoch's are drawn in the background meanwhile (drawing takes a fraction of a second
        that training would otherwise wait for, every epoch). The latest ROWS_KEPT epochs are
        kept."""
        rows = self._rows_future((batch_size, num_steps, epoch)).result()
        self._rows_future((batch_size, num_steps, epoch + 1), background=True)
        return rows

    def _rows_future(self, key: tuple, background: bool = False) -> Future:
        with self._rows_lock:
            entry = self._rows.get(key)
            mine = entry is None
            if mine:
                entry = self._rows[key] = Future()
                while len(self._rows) > ROWS_KEPT:
                    self._rows.popitem(last=False)
        if mine and background:
            threading.Thread(target=self._draw_rows, args=(key, entry, True), daemon=True).start()
        elif mine:
            self._draw_rows(key, entry)
        return entry

    def _draw_rows(self, key: tuple, entry: Future, background: bool = False) -> None:
        try:
            entry.set_result(self._training_rows(*key, background=background))
        except BaseException as error:
            with self._rows_lock:  # a later request draws again rather than re-raise this
                if self._rows.get(key) is entry:
                    del self._rows[key]
            entry.set_exception(error)

    def _training_rows(self, batch_size: int, num_steps: int, epoch: int, background=False):
        """Epoch `epoch`'s B row streams of exactly epoch_windows * T + 1 tokens each. In the
        `background`, the drawing lets other threads run every few samples: drawing is pure
        Python, and the thread launching the GPU's work would otherwise wait for the interpreter
        lock (milliseconds at a time) while the GPU idles."""
        rng = np.random.default_rng([self.seed, _TRAIN_TAG, epoch])
        length = self.epoch_windows * num_steps + 1
        streams, flags = [], []
        for _ in range(batch_size):
            samples, size = [], 1  # the leading boundary character
            while size < length:
                samples.append(self.generate(rng))
                size += len(samples[-1].text)
                if background and len(samples) % 8 == 0:
                    time.sleep(0)  # let a waiting thread take the interpreter lock
            stream, flag = self._stream(samples)
            streams.append(stream[:length])
            flags.append(flag[:length])
        return np.stack(streams), np.stack(flags)

    def fixed_rows(self, split: str, batch_size: int):
        """The fixed set dealt to B rows in contiguous chunks, padded to one length."""
        samples = self.fixed_set(split)
        chunks = np.array_split(np.arange(len(samples)), batch_size)
        pairs = [self._stream([samples[i] for i in chunk]) for chunk in chunks]
        return pad_rows([p[0] for p in pairs], [p[1] for p in pairs])

    def batches(
        self, split: str, batch_size: int = 20, num_steps: int = 35, epoch: int = 0
    ) -> Iterator[Batch]:
        check_batch_arguments(split, batch_size, num_steps)
        if split == "train":
            rows, scored = self.training_rows(batch_size, num_steps, epoch)
        else:
            rows, scored = self.fixed_rows(split, batch_size)
        return token_windows(rows, scored, num_steps)

    # -- views ------------------------------------------------------------------------------

    def samples(self, count: int, seed: int = 0) -> list[str]:
        return [line for line, _, _ in self.scored_samples(count, seed)]

    def scored_samples(self, count: int, seed: int = 0) -> list[tuple[str, int, int]]:
        """`samples`, each with the range [start, stop) of its line that is scored."""
        rng = np.random.default_rng(seed)
        lines = []
        for _ in range(count):
            sample = self.generate(rng)
            line = self.render(sample)
            lines.append((line, min(sample.scored_start, len(line)),
                          min(sample.scored_stop, len(line))))
        return lines

    def render(self, sample: Sample) -> str:
        """One line of text for `sample` (the raw characters, unless a task needs otherwise)."""
        return sample.text

    def describe(self) -> dict:
        splits = {
            # Training windows hold 20 x 35 tokens at the paper's batch; other sizes scale it.
            "train": {
                "samples": "fresh each epoch",
                "windows": self.epoch_windows,
                "tokens": self.epoch_windows * 20 * 35,
            }
        }
        for split in ("valid", "test"):
            samples = self.fixed_set(split)
            splits[split] = {
                "samples": len(samples),
                "tokens": sum(len(s.text) for s in samples),
                "scored": sum(s.scored_stop - s.scored_start for s in samples),
            }
        return {
            "task": self.name,
            "vocabulary": f"{len(self.vocabulary)} symbols: {self.vocabulary!r}",
            "training seed": self.seed,
            "splits": splits,
        }
