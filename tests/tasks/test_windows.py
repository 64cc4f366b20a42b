import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsearch.errors import UserError
from cellsearch.tasks.windows import (
    pack_pieces,
    stream_rows,
    token_windows,
    window_count,
)


def reassemble(batches):
    """Each row's stream rebuilt from its windows: all inputs, then the last target."""
    inputs = np.concatenate([b.inputs for b in batches])  # (W*T, B)
    return np.concatenate([inputs, batches[-1].targets[-1:]]).T  # (B, W*T + 1)


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(2, 400),
    batch_size=st.integers(1, 7),
    num_steps=st.integers(1, 40),
)
def test_windows_of_one_stream_give_back_the_stream(length, batch_size, num_steps):
    stream = np.arange(length) + 100
    if length // batch_size < 2:
        with pytest.raises(UserError, match="too short"):
            stream_rows(stream, batch_size)
        return
    rows = stream_rows(stream, batch_size)
    batches = list(token_windows(rows, np.ones(rows.shape, bool), num_steps))
    L = length // batch_size
    assert len(batches) == window_count(L, num_steps) == -(-(L - 1) // num_steps)
    for batch in batches:
        assert batch.inputs.shape == batch.targets.shape == batch.mask.shape
        assert batch.inputs.shape == (num_steps, batch_size)
        assert batch.inputs.dtype == np.int64 and batch.mask.dtype == np.float32
    # Every target is the next token after its input, wherever it is scored.
    for batch in batches:
        scored = batch.mask == 1
        np.testing.assert_array_equal(batch.targets[scored], batch.inputs[scored] + 1)
    # Row b, read window after window, is the b-th contiguous piece of the stream; the rows
    # concatenated are the stream (less the N mod B tail), and the padding is never scored.
    rebuilt = reassemble(batches)[:, :L]
    np.testing.assert_array_equal(rebuilt.reshape(-1), stream[: batch_size * L])
    mask = np.concatenate([b.mask for b in batches]).T
    assert mask.sum() == batch_size * (L - 1)
    assert mask[:, : L - 1].all()
    # State is carried over: only the first window resets.
    assert batches[0].reset.all()
    assert not any(b.reset.any() for b in batches[1:])


def test_token_windows_score_only_the_flagged_targets():
    rows = np.arange(20).reshape(2, 10)
    scored = np.zeros((2, 10), bool)
    scored[0, 3] = scored[1, 9] = True
    batches = list(token_windows(rows, scored, num_steps=4))
    assert len(batches) == 3  # 9 predictions per row, the last window padded
    targets = [b.targets[b.mask == 1].tolist() for b in batches]
    assert targets == [[3], [], [19]]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=0, max_size=40), batch_size=st.integers(1, 8))
def test_pack_pieces_places_every_piece_once_in_order_and_balanced(counts, batch_size):
    rows = pack_pieces(counts, batch_size)
    assert len(rows) == batch_size
    placed = [piece for row in rows for piece in row]
    assert sorted(placed) == list(range(len(counts)))
    assert all(row == sorted(row) for row in rows)
    ends = [sum(counts[p] for p in row) for row in rows]
    # The LPT rule: no row ends more than its longest piece after the earliest-ending row.
    for row, end in zip(rows, ends):
        if row:
            assert end - min(ends) <= max(counts[p] for p in row)
