"""The §3.6 schedules on synthetic validation curves: which epoch runs at which rate, when to stop."""

import math

import pytest

from cellsearch.errors import UserError
from cellsearch.evaluation.settings import Settings
from cellsearch.train.schedules import (
    MusicSchedule,
    PTBSchedule,
    SearchSchedule,
    schedule_for,
)


def run(schedule, scores):
    """Train on `scores` until done; return the rate each epoch ran at and its is_best flag."""
    rates, best = [], []
    for score in scores:
        if schedule.done:
            break
        rates.append(schedule.learning_rate)
        schedule.end_epoch(score)
        best.append(schedule.is_best)
    return rates, best


def improve_then_plateau(improving_epochs, total=2000):
    """Scores 10, 9, ... for `improving_epochs` epochs, then flat forever (no improvement)."""
    return [10.0 - min(epoch, improving_epochs - 1) for epoch in range(total)]


def always_improving(total):
    return [1.0 / (epoch + 1) for epoch in range(total)]


# --- SearchSchedule ------------------------------------------------------------------------------


def test_search_starts_at_the_setting_rate():
    schedule = SearchSchedule(2.0)
    assert (schedule.learning_rate, schedule.epoch, schedule.done, schedule.is_best) == (2.0, 0, False, False)
    assert schedule.best_score == math.inf


def test_search_improve_five_then_plateau():
    schedule = SearchSchedule(1.0)
    rates, best = run(schedule, improve_then_plateau(5))
    # epochs 6, 7, 8 are the three plateau epochs; 9..12 run at halved rates; done after 12.
    assert rates == [1.0] * 8 + [0.5, 0.25, 0.125, 0.0625]
    assert best == [True] * 5 + [False] * 7
    assert schedule.epoch == 12 and schedule.done
    assert schedule.best_score == 6.0


def test_search_done_becomes_true_exactly_after_the_last_decayed_epoch():
    schedule = SearchSchedule(1.0)
    done_after = []
    for score in improve_then_plateau(5, total=12):
        schedule.end_epoch(score)
        done_after.append(schedule.done)
    assert done_after == [False] * 11 + [True]


def test_search_improvement_restarts_the_plateau_count():
    # improve 1-3, plateau 4-5, improve 6, plateau 7-9 -> decay epochs 10-13
    scores = [5, 4, 3, 3, 3, 2, 2, 2, 2] + [2] * 20
    rates, best = run(SearchSchedule(1.0), scores)
    assert rates == [1.0] * 9 + [0.5, 0.25, 0.125, 0.0625]
    assert best == [True, True, True, False, False, True] + [False] * 7


def test_search_improvement_while_decaying_is_best_but_does_not_extend():
    scores = [3, 3, 3, 3, 2, 1, 0, -1, -2, -3]
    schedule = SearchSchedule(1.0)
    rates, best = run(schedule, scores)
    assert rates == [1.0] * 4 + [0.5, 0.25, 0.125, 0.0625]
    assert best == [True, False, False, False, True, True, True, True]
    assert schedule.done and schedule.best_score == -1


def test_search_max_epochs_caps_an_always_improving_run():
    schedule = SearchSchedule(1.0)
    rates, _ = run(schedule, always_improving(500))
    assert rates == [1.0] * 100 and schedule.done
    rates, _ = run(SearchSchedule(1.0, max_epochs=5), always_improving(500))
    assert len(rates) == 5


def test_search_nan_is_never_an_improvement():
    schedule = SearchSchedule(1.0)
    rates, best = run(schedule, [1.0] + [math.nan] * 20)
    assert rates == [1.0] * 4 + [0.5, 0.25, 0.125, 0.0625]
    assert best == [True] + [False] * 7


def test_search_custom_constants():
    rates, _ = run(SearchSchedule(1.0, patience=1, decay_epochs=2, factor=0.1), [1, 1, 1, 1, 1])
    assert rates == pytest.approx([1.0, 1.0, 0.1, 0.01], rel=1e-12)
    rates, _ = run(SearchSchedule(1.0, decay_epochs=0), [1, 1, 1, 1, 1, 1])
    assert rates == [1.0] * 4


def test_end_epoch_after_done_is_a_caller_bug():
    schedule = SearchSchedule(1.0, max_epochs=1)
    schedule.end_epoch(1.0)
    with pytest.raises(RuntimeError, match="after the schedule was done"):
        schedule.end_epoch(1.0)


# --- MusicSchedule -------------------------------------------------------------------------------


def test_music_decays_every_ten_plateau_epochs_and_stops_below_1e_3():
    schedule = MusicSchedule(0.01)
    rates, best = run(schedule, improve_then_plateau(2))
    # 0.01 * 0.8**10 = 0.00107 >= 1e-3, 0.01 * 0.8**11 = 0.00086 < 1e-3: the 11th decay, after
    # epoch 2 + 11 * 10 = 112, stops training; that rate is never used.
    expected, rate = [0.01] * 12, 0.01
    for _ in range(10):
        rate *= 0.8
        expected += [rate] * 10
    assert rates == expected
    assert len(rates) == 112 and schedule.done
    assert schedule.learning_rate == pytest.approx(0.01 * 0.8**11, rel=1e-12)
    assert best == [True, True] + [False] * 110


def test_music_counter_resets_on_improvement_and_after_each_decay():
    # 9 plateau epochs, an improvement, then 10 plateau: the first decay comes after epoch 21.
    scores = [5.0] + [5.0] * 9 + [4.0] + [4.0] * 10 + [4.0] * 10
    rates, _ = run(MusicSchedule(1.0), scores)
    assert rates[:21] == [1.0] * 21
    # counter reset after the decay: the next one needs 10 more plateau epochs (22..31).
    assert rates[21:31] == [0.8] * 10
    assert len(rates) == 31


def test_music_stops_after_800_epochs():
    schedule = MusicSchedule(1.0)
    rates, _ = run(schedule, always_improving(1000))
    assert rates == [1.0] * 800 and schedule.done and schedule.epoch == 800


def test_music_rate_already_below_the_stop_is_refused():
    with pytest.raises(UserError, match="below the music schedule's stopping rate"):
        MusicSchedule(1e-4)


# --- PTBSchedule ---------------------------------------------------------------------------------


def test_ptb_constant_for_max_epoch_epochs_then_decays_each_epoch_for_30_in_all():
    schedule = PTBSchedule(1.0, max_epoch=4, decay=0.5)
    scores = [3.0, 2.0, 2.5, 1.0] + [1.5] * 40  # scores never change the rate
    rates, best = run(schedule, scores)
    assert rates == [1.0] * 4 + [0.5**k for k in range(1, 27)]
    assert len(rates) == 30 and schedule.done
    assert best == [True, True, False, True] + [False] * 26


def test_ptb_max_epoch_11_decay_08():
    rates, _ = run(PTBSchedule(0.5, max_epoch=11, decay=0.8), always_improving(100))
    assert rates[:11] == [0.5] * 11
    assert rates[11] == pytest.approx(0.4, rel=1e-12)
    assert rates[29] == pytest.approx(0.5 * 0.8**19, rel=1e-12)
    assert len(rates) == 30


def test_ptb_max_epoch_beyond_total_keeps_the_rate():
    rates, _ = run(PTBSchedule(1.0, max_epoch=40, decay=0.5, total_epochs=30), always_improving(100))
    assert rates == [1.0] * 30


# --- schedule_for and validation -----------------------------------------------------------------

ARITH = Settings(init_scale=1, learning_rate=0.5, max_grad_norm=5, num_layers=2, num_parameters=250_000)
PTB = Settings(
    init_scale=1, learning_rate=1, max_grad_norm=5, num_layers=2, num_parameters=5_000_000,
    dropout=0.5, max_epoch=7, decay=0.65,
)


def test_schedule_for_builds_each_kind_from_settings():
    search = schedule_for("search", ARITH)
    assert isinstance(search, SearchSchedule) and search.learning_rate == 0.5 and search.max_epochs == 100
    music = schedule_for("music", ARITH)
    assert isinstance(music, MusicSchedule) and music.learning_rate == 0.5
    ptb = schedule_for("ptb", PTB)
    assert isinstance(ptb, PTBSchedule)
    rates, _ = run(ptb, always_improving(100))
    assert rates[:8] == [1.0] * 7 + [0.65]


def test_schedule_for_forwards_constants():
    rates, _ = run(schedule_for("search", ARITH, max_epochs=2), always_improving(10))
    assert rates == [0.5, 0.5]


def test_schedule_for_errors():
    with pytest.raises(UserError, match="needs settings with max_epoch and decay"):
        schedule_for("ptb", ARITH)
    with pytest.raises(UserError, match="known schedules: search, music, ptb"):
        schedule_for("cosine", ARITH)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SearchSchedule(0.0), "learning_rate"),
        (lambda: SearchSchedule(math.inf), "learning_rate"),
        (lambda: SearchSchedule(1.0, patience=0), "patience"),
        (lambda: SearchSchedule(1.0, factor=2.0), "factor"),
        (lambda: MusicSchedule(1.0, max_epochs=0), "max_epochs"),
        (lambda: PTBSchedule(1.0, max_epoch=0, decay=0.5), "max_epoch"),
        (lambda: PTBSchedule(1.0, max_epoch=4, decay=0.0), "decay"),
    ],
)
def test_bad_constants_are_user_errors(make, message):
    with pytest.raises(UserError, match=message):
        make()
