"""Properties shared by the generated tasks: seeding, fresh epochs, fixed evaluation sets."""

import numpy as np
import pytest

from cellsearch.errors import UserError
from cellsearch.tasks import get_task
from cellsearch.tasks.arith import Arith
from cellsearch.tasks.memorize import Memorize
from cellsearch.tasks.xml import Xml

SMALL = dict(epoch_windows=6, valid_samples=40, test_samples=30)
TASKS = [Memorize, Arith, Xml]


def stream_of(batches):
    inputs = np.concatenate([b.inputs for b in batches])
    return np.concatenate([inputs, batches[-1].targets[-1:]])


@pytest.mark.parametrize("cls", TASKS)
def test_training_windows_continue_one_stream_per_row(cls):
    task = cls(seed=3, **SMALL)
    batches = list(task.batches("train", batch_size=4, num_steps=10, epoch=2))
    assert len(batches) == SMALL["epoch_windows"]
    for previous, current in zip(batches, batches[1:]):
        # The next window starts with the token the previous one was asked to predict last.
        np.testing.assert_array_equal(current.inputs[0], previous.targets[-1])
    assert batches[0].reset.all() and not any(b.reset.any() for b in batches[1:])
    rows, _ = task.training_rows(4, 10, epoch=2)
    np.testing.assert_array_equal(stream_of(batches).T, rows)
    # Each row reads as the boundary symbol, then whole samples (the last one cut).
    for row in rows:
        assert task.decode(row[:1]) == task.boundary
        assert (row < len(task.vocabulary)).all()


@pytest.mark.parametrize("cls", TASKS)
def test_training_data_is_fresh_each_epoch_and_reproducible(cls):
    def train(seed, epoch):
        return stream_of(list(cls(seed=seed, **SMALL).batches("train", 3, 12, epoch=epoch)))

    np.testing.assert_array_equal(train(0, 1), train(0, 1))
    assert not np.array_equal(train(0, 1), train(0, 2))
    assert not np.array_equal(train(0, 1), train(1, 1))


@pytest.mark.parametrize("cls", TASKS)
def test_valid_and_test_sets_are_fixed_and_whole(cls):
    a, b = cls(seed=0, **SMALL), cls(seed=99, **SMALL)
    assert a.fixed_set("valid") == b.fixed_set("valid")
    assert a.fixed_set("valid") != a.fixed_set("test")
    assert len(a.fixed_set("test")) == SMALL["test_samples"]
    scored = sum(s.scored_stop - s.scored_start for s in a.fixed_set("valid"))
    # Whatever the window shape, every sample is in the pass and each scored symbol counts once.
    for batch_size, num_steps in [(1, 35), (4, 7), (20, 35), (64, 3)]:
        batches = list(a.batches("valid", batch_size, num_steps))
        assert sum(batch.mask.sum() for batch in batches) == scored
        assert all(batch.inputs.shape == (num_steps, batch_size) for batch in batches)
        assert batches[0].reset.all()
    # The rows, less their leading boundary symbol and trailing padding, are the samples in order.
    samples = a.fixed_set("valid")
    rows, flags = a.fixed_rows("valid", 3)
    boundary = a.vocabulary.index(a.boundary)
    texts = []
    for row, flag in zip(rows, flags):
        last = np.flatnonzero(flag).max()
        end = last + int(np.argmax(row[last:] == boundary))  # the boundary ending the last sample
        texts.append(a.decode(row[1 : end + 1]))
        assert not flag[end + 1 :].any() and not row[end + 1 :].any()
    assert "".join(texts) == "".join(s.text for s in samples)


def test_get_task_passes_the_seed_and_options_and_names_unknown_tasks():
    task = get_task("arith", seed=5, epoch_windows=3, valid_samples=7)
    assert task.seed == 5 and len(task.fixed_set("valid")) == 7
    assert len(list(task.batches("train"))) == 3
    with pytest.raises(UserError, match="unknown task 'arithmetic'.*memorize, arith, xml, ptb"):
        get_task("arithmetic")
    with pytest.raises(UserError, match="task xml has no option windows; its options are "
                                        "epoch_windows, test_samples, valid_samples"):
        get_task("xml", windows=3)


def test_evaluations_share_a_synthetic_task_and_build_file_tasks_anew(monkeypatch):
    from cellsearch import tasks

    assert tasks.shared_task("memorize", seed=3) is tasks.shared_task("memorize", seed=3)
    assert tasks.shared_task("memorize", seed=3) is not tasks.shared_task("memorize", seed=4)
    assert (tasks.shared_task("memorize", seed=3, epoch_windows=2)
            is not tasks.shared_task("memorize", seed=3))
    assert tasks.shared_task("memorize", seed=3, epoch_windows=2).epoch_windows == 2
    with pytest.raises(UserError, match="unknown task"):
        tasks.shared_task("nope")
    built = []
    monkeypatch.setattr(tasks, "get_task", lambda name, *a, **k: built.append(name) or object())
    assert tasks.shared_task("ptb", "/data") is not tasks.shared_task("ptb", "/data")
    assert built == ["ptb", "ptb"]


def test_bad_arguments_are_user_errors():
    task = Memorize(**SMALL)
    with pytest.raises(UserError, match="unknown split 'validation'"):
        list(task.batches("validation"))
    with pytest.raises(UserError, match="batch size"):
        list(task.batches("train", batch_size=0))
    with pytest.raises(UserError, match="epoch_windows"):
        Memorize(epoch_windows=0)


def test_an_epoch_asked_for_by_several_threads_at_once_is_drawn_once(monkeypatch):
    import threading
    import time

    from cellsearch.tasks.arith import Arith

    task = Arith(seed=3, epoch_windows=4)
    draws = []
    original = task._training_rows

    def counting(*args, **options):
        draws.append(args)
        time.sleep(0.05)  # long enough for the other threads to ask while this one draws
        return original(*args, **options)

    monkeypatch.setattr(task, "_training_rows", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(task.training_rows(2, 5, 7)))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert draws.count((2, 5, 7)) == 1
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_the_next_epoch_is_drawn_in_the_background_once(monkeypatch):
    from cellsearch.tasks.arith import Arith

    task = Arith(seed=3, epoch_windows=4)
    draws = []
    original = task._training_rows
    monkeypatch.setattr(task, "_training_rows", lambda *args, **options: draws.append(args) or original(*args, **options))
    task.training_rows(2, 5, 7)
    prefetched = task._rows[(2, 5, 8)]  # started before epoch 7's rows were returned
    assert task.training_rows(2, 5, 8) is prefetched.result()
    rows, _ = prefetched.result()
    assert draws.count((2, 5, 8)) == 1
    # the same rows as a task that draws epoch 8 on demand
    fresh, _ = Arith(seed=3, epoch_windows=4)._training_rows(2, 5, 8)
    np.testing.assert_array_equal(rows, fresh)


def test_a_failed_draw_is_not_kept(monkeypatch):
    from cellsearch.tasks.arith import Arith

    task = Arith(seed=3, epoch_windows=4)
    original, calls = task._training_rows, []

    def failing_once(*args, **options):
        calls.append(args)
        if len(calls) == 1:
            raise MemoryError("no room")
        return original(*args, **options)

    monkeypatch.setattr(task, "_training_rows", failing_once)
    with pytest.raises(MemoryError):
        task.training_rows(2, 5, 0)
    rows, _ = task.training_rows(2, 5, 0)
    assert calls.count((2, 5, 0)) == 2 and rows.shape[0] == 2
