import os
import pickle

import numpy as np
import pytest

from cellsearch.errors import UserError
from cellsearch.tasks import get_task
from cellsearch.tasks.files import MUSIC_FILES, MUSIC_PICKLES

# music/SOURCES.md: (sequences, steps) per split.
COUNTS = {
    "nottingham": {"train": (694, 176561), "valid": (173, 45513), "test": (170, 44463)},
    "piano-midi": {"train": (87, 75911), "valid": (12, 8540), "test": (25, 19036)},
    "jsb": {"train": (229, 13807), "valid": (76, 4602), "test": (77, 4725)},
    "musedata": {"train": (524, 245202), "valid": (135, 82755), "test": (124, 64339)},
}


def write_pickle(root, name, content, protocol=2):
    path = root / MUSIC_PICKLES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)
    return path


def random_songs(rng, count):
    """Sequences in the canonical layout: lists of timesteps, each a list of MIDI numbers."""
    return [
        [sorted({int(n) for n in rng.integers(21, 109, rng.integers(0, 5))})
         for _ in range(rng.integers(1, 40))]
        for _ in range(count)
    ]  # fmt: skip


def read_back(batches):
    """Pieces as a reader of the windows sees them: a row's scored frames from one reset to the
    next form one piece; also checks that each input is the previous frame (silence first)."""
    pieces = []
    B = batches[0].mask.shape[1]
    for b in range(B):
        current = None
        for batch in batches:
            if batch.reset[b]:
                if current:
                    pieces.append(np.array(current))
                current = []
            scored = batch.mask[:, b] == 1
            for t in np.flatnonzero(scored):
                previous = current[-1] if current else np.zeros(88, np.float32)
                np.testing.assert_array_equal(batch.inputs[t, b], previous)
                current.append(batch.targets[t, b])
            # Scored steps of a window come first; the padding after them is silent.
            assert not scored[np.argmin(scored) :].any() or scored.all()
        if current:
            pieces.append(np.array(current))
    return pieces


def same_pieces(found, expected):
    key = lambda roll: roll.astype(np.uint8).tobytes()  # noqa: E731
    return sorted(map(key, found)) == sorted(map(key, expected))


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(5)
    songs = {split: random_songs(rng, n) for split, n in (("train", 13), ("valid", 5), ("test", 4))}
    songs["valid"][0][0] = [21, 108]  # the two ends of the piano
    write_pickle(tmp_path, "nottingham", songs)
    return get_task("nottingham", tmp_path, seed=1), songs


def test_a_pickle_in_the_canonical_layout_gives_piano_rolls(small):
    task, songs = small
    assert task.source.name == "Nottingham.pickle"
    roll = task.pieces["valid"][0]
    assert roll.shape == (len(songs["valid"][0]), 88)
    assert np.flatnonzero(roll[0]).tolist() == [0, 87]
    for song, roll in zip(songs["train"], task.pieces["train"]):
        assert [sorted(np.flatnonzero(frame) + 21) for frame in roll] == song


@pytest.mark.parametrize("batch_size, num_steps", [(1, 35), (3, 4), (20, 35), (4, 1)])
def test_windows_hold_every_piece_once_starting_after_a_reset(small, batch_size, num_steps):
    task, _ = small
    for split in ("train", "valid"):
        batches = list(task.batches(split, batch_size, num_steps, epoch=3))
        assert all(b.inputs.shape == (num_steps, batch_size, 88) for b in batches)
        assert batches[0].inputs.dtype == np.float32 and batches[0].reset.all()
        assert same_pieces(read_back(batches), task.pieces[split])
        steps = sum(len(piece) for piece in task.pieces[split])
        assert sum(b.mask.sum() for b in batches) == steps


def test_training_pieces_are_shuffled_per_epoch_and_evaluation_is_fixed(small):
    task, _ = small

    def layout(split, epoch):
        return np.concatenate([b.targets for b in task.batches(split, 3, 5, epoch=epoch)])

    assert np.array_equal(layout("train", 0), layout("train", 0))
    assert not np.array_equal(layout("train", 0), layout("train", 1))
    assert np.array_equal(layout("valid", 0), layout("valid", 1))


def test_epoch_windows_caps_only_the_training_pass(small, tmp_path):
    full, _ = small
    capped = get_task("nottingham", tmp_path, seed=1, epoch_windows=2)
    train = list(capped.batches("train", 2, 5))
    assert len(train) == 2
    np.testing.assert_array_equal(train[1].targets, list(full.batches("train", 2, 5))[1].targets)
    assert len(list(capped.batches("valid", 2, 5))) == len(list(full.batches("valid", 2, 5)))


def test_bad_pickles_are_refused(tmp_path):
    write_pickle(tmp_path, "jsb", {"train": [[[20]]], "valid": [], "test": []})
    with pytest.raises(UserError, match="outside MIDI 21..108"):
        get_task("jsb", tmp_path)
    write_pickle(tmp_path, "jsb", [1, 2, 3])
    with pytest.raises(UserError, match="not a dict with train/valid/test"):
        get_task("jsb", tmp_path)
    marker = tmp_path / "ran"
    # A pickle that would run a command when loaded is refused before anything runs.
    payload = type("Payload", (), {"__reduce__": lambda self: (os.system, (f"touch {marker}",))})
    write_pickle(tmp_path, "jsb", {"train": payload()})
    with pytest.raises(UserError, match="refusing to load"):
        get_task("jsb", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name", list(COUNTS))
def test_real_music_splits_have_the_published_counts(name, require_files):
    task = get_task(name, require_files(MUSIC_FILES[name].path))
    for split, (sequences, steps) in COUNTS[name].items():
        assert len(task.pieces[split]) == sequences
        assert sum(len(piece) for piece in task.pieces[split]) == steps
        # Every timestep of the split is scored exactly once in a pass.
        assert sum(b.mask.sum() for b in task.batches(split)) == steps


def test_real_jsb_windows_and_pickle_agree_with_the_mat_file(require_files, tmp_path):
    task = get_task("jsb", require_files(MUSIC_FILES["jsb"].path))
    assert same_pieces(read_back(list(task.batches("test"))), task.pieces["test"])
    # The canonical pickle layout (SOURCES.md): notes of each timestep as MIDI numbers.
    canonical = {
        split: [[(np.flatnonzero(frame) + 21).tolist() for frame in roll] for roll in pieces]
        for split, pieces in task.pieces.items()
    }
    write_pickle(tmp_path, "jsb", canonical)
    from_pickle = get_task("jsb", tmp_path)
    for split in ("train", "valid", "test"):
        assert all(
            np.array_equal(a, b) for a, b in zip(from_pickle.pieces[split], task.pieces[split])
        )
