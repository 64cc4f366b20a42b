import string

import numpy as np

from cellsearch.tasks.memorize import SYMBOLS, Memorize


def test_samples_read_five_letters_then_reproduce_them():
    task = Memorize()
    rng = np.random.default_rng(0)
    letters = set()
    for _ in range(2000):
        sample = task.generate(rng)
        read, reproduced = sample.text.split("=")
        assert len(read) == SYMBOLS and set(read) <= set(string.ascii_lowercase)
        assert reproduced == read + "."
        assert sample.text[sample.scored_start : sample.scored_stop] == read
        letters.update(read)
    assert letters == set(string.ascii_lowercase)


def test_scored_targets_equal_the_inputs_read_six_steps_earlier():
    task = Memorize(epoch_windows=8)
    for split in ("train", "valid"):
        batches = list(task.batches(split, batch_size=5, num_steps=35))
        inputs = np.concatenate([b.inputs for b in batches])  # (W*T, B)
        targets = np.concatenate([b.targets for b in batches])
        mask = np.concatenate([b.mask for b in batches])
        stream = np.concatenate([inputs[:1], targets])  # (W*T + 1, B)
        t, b = np.nonzero(mask)
        assert len(t) > 0
        # Target t+1 is a reproduced letter; its original came SYMBOLS + 1 tokens earlier.
        np.testing.assert_array_equal(stream[t + 1, b], stream[t + 1 - (SYMBOLS + 1), b])
        # Exactly the 5 reproduced letters of each whole sample are scored, nothing else.
        letters = stream[t + 1, b]
        assert (letters < 26).all()
        if split == "valid":
            assert mask.sum() == SYMBOLS * len(task.fixed_set("valid"))


def test_an_epoch_has_the_documented_number_of_windows():
    task = Memorize()
    assert sum(1 for _ in task.batches("train")) == task.epoch_windows == 500
