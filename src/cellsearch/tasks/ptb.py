"""Word-level Penn Treebank in the setup of Mikolov et al. (2010), as used in §3.5.

The three files have one sentence per line, already lower-cased with rare words as `<unk>` and
numbers as `N`; an `<eos>` token ends each line. The vocabulary is the 10,000 word types of the
training file, numbered by decreasing frequency (ties alphabetically) as in Zaremba et al.'s
reader, so id 0 is the most frequent word. Token counts: 929,589 / 73,760 / 82,430.

Batching is Zaremba et al.'s: each split is one stream cut into B contiguous rows, walked through
in windows of T words with the state carried over. The stream does not change between epochs.
Unlike their reader, the last partial window is kept (padded, mask 0), so all but the first word
of each row is scored. Metrics: perplexity and next-word accuracy (the search metric).
"""

from __future__ import annotations

import collections
import itertools
import os
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
from cellsearch.tasks.windows import stream_rows, token_windows

END_OF_SENTENCE = "<eos>"


def read_words(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return file.read().replace("\n", f" {END_OF_SENTENCE} ").split()


def build_vocabulary(words: list[str]) -> list[str]:
    """Word types by decreasing count, ties in alphabetical order (Zaremba et al.'s order)."""
    counts = collections.Counter(words)
    return sorted(counts, key=lambda word: (-counts[word], word))


class PennTreebank(Task):
    name = "ptb"
    output_kind = "softmax"
    metric = "accuracy"

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        seed: int = 0,
        epoch_windows: int | None = None,
    ):
        """`epoch_windows` caps the training windows of an epoch (the first ones of the stream),
        a cheap setting for tests and demos; by default an epoch is the whole training stream."""
        self.epoch_windows = check_epoch_windows(epoch_windows)
        root = files.data_root(data_dir)
        paths = files.ensure_files(root, [files.PTB_FILES[split] for split in SPLITS])
        self.paths = dict(zip(SPLITS, paths, strict=True))
        words = {split: read_words(path) for split, path in self.paths.items()}
        self.words = build_vocabulary(words["train"])
        self.word_ids = {word: i for i, word in enumerate(self.words)}
        self.streams = {}
        for split, path in self.paths.items():
            unknown = set(words[split]) - self.word_ids.keys()
            if unknown:
                raise UserError(
                    f"{path} has {len(unknown)} words missing from the training vocabulary "
                    f"(e.g. {sorted(unknown)[0]!r}); it is not the Mikolov PTB file"
                )
            self.streams[split] = np.array([self.word_ids[w] for w in words[split]], np.int64)
        self.input_size = self.output_size = len(self.words)

    def batches(
        self, split: str, batch_size: int = 20, num_steps: int = 35, epoch: int = 0
    ) -> Iterator[Batch]:
        check_batch_arguments(split, batch_size, num_steps)
        rows = stream_rows(self.streams[split], batch_size)
        windows = token_windows(rows, np.ones(rows.shape, dtype=bool), num_steps)
        if split == "train" and self.epoch_windows is not None:
            return itertools.islice(windows, self.epoch_windows)
        return windows

    def sentences(self, split: str) -> list[np.ndarray]:
        """The split's sentences as id arrays, each ending with `<eos>`."""
        stream = self.streams[split]
        ends = np.flatnonzero(stream == self.word_ids[END_OF_SENTENCE]) + 1
        return np.split(stream, ends[:-1])

    def samples(self, count: int, seed: int = 0) -> list[str]:
        """`count` training sentences chosen at random with `seed`, without the `<eos>`."""
        sentences = self.sentences("train")
        count = min(count, len(sentences))
        chosen = np.random.default_rng(seed).choice(len(sentences), size=count, replace=False)
        return [" ".join(self.words[i] for i in sentences[j][:-1]) for j in chosen]

    def describe(self) -> dict:
        return {
            "task": self.name,
            "vocabulary": f"{len(self.words)} words, most frequent first: "
            + " ".join(self.words[:10]),
            "splits": {
                split: {
                    "sentences": int((stream == self.word_ids[END_OF_SENTENCE]).sum()),
                    "tokens": len(stream),
                }
                for split, stream in self.streams.items()
            },
        }
