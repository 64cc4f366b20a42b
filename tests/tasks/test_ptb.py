import hashlib
import itertools

import numpy as np
import pytest

from cellsearch.errors import UserError
from cellsearch.tasks import files, get_task
from cellsearch.tasks.ptb import build_vocabulary

PTB = ("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt")


@pytest.fixture(scope="module")
def ptb(require_files):
    return get_task("ptb", require_files(*PTB))


def test_ptb_has_mikolovs_sizes(ptb):
    assert {split: len(stream) for split, stream in ptb.streams.items()} == {
        "train": 929_589,
        "valid": 73_760,
        "test": 82_430,
    }
    assert ptb.input_size == ptb.output_size == len(set(ptb.words)) == 10_000
    assert ptb.describe()["splits"]["valid"]["sentences"] == 3_370
    assert ptb.words[:4] == ["the", "<unk>", "<eos>", "N"]


def test_ptb_windows_walk_each_row_through_the_stream(ptb):
    batches = list(ptb.batches("valid", batch_size=20, num_steps=35))
    L = 73_760 // 20
    assert len(batches) == -(-(L - 1) // 35)
    inputs = np.concatenate([b.inputs for b in batches])
    rows = np.concatenate([inputs, batches[-1].targets[-1:]]).T[:, :L]
    np.testing.assert_array_equal(rows.reshape(-1), ptb.streams["valid"][: 20 * L])
    assert sum(b.mask.sum() for b in batches) == 20 * (L - 1)
    # Sentences end with <eos> and read back as the file's lines.
    with open(ptb.paths["valid"]) as file:
        first_line = file.readline().split()
    assert [ptb.words[i] for i in ptb.sentences("valid")[0][:-1]] == first_line


def test_epoch_windows_caps_the_training_pass(ptb, require_files):
    capped = get_task("ptb", require_files(*PTB), epoch_windows=5)
    train = list(capped.batches("train"))
    assert len(train) == 5
    fifth = next(itertools.islice(ptb.batches("train"), 4, None))
    np.testing.assert_array_equal(train[4].inputs, fifth.inputs)
    assert len(list(capped.batches("test"))) == len(list(ptb.batches("test")))


def test_vocabulary_order_is_by_count_then_alphabetical():
    assert build_vocabulary("b a c b c a d b".split()) == ["b", "a", "c", "d"]


def test_a_file_with_words_outside_the_vocabulary_is_refused(tmp_path, monkeypatch):
    texts = {"train": " a b c\n b c\n", "valid": " a b\n", "test": " a zebra\n"}
    data_files = {}
    for split, text in texts.items():
        content = text.encode()
        (tmp_path / "ptb").mkdir(exist_ok=True)
        (tmp_path / "ptb" / f"ptb.{split}.txt").write_bytes(content)
        data_files[split] = files.DataFile(
            f"ptb/ptb.{split}.txt", hashlib.sha256(content).hexdigest(), len(content), ("x",)
        )
    monkeypatch.setattr(files, "PTB_FILES", data_files)
    with pytest.raises(UserError, match="ptb.test.txt has 1 words missing .*'zebra'"):
        get_task("ptb", tmp_path)
