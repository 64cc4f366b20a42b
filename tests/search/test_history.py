"""History: best values, the ratio to the GRU and the fitness of eq. 1."""

from __future__ import annotations

import math

import pytest

from cellsearch.evaluation.result import DIVERGED, Result
from cellsearch.evaluation.settings import Settings
from cellsearch.search import History


def outcome(task, learning_rate, value, metric="accuracy", status="ok"):
    settings = Settings(
        init_scale=1.0,
        learning_rate=learning_rate,
        max_grad_norm=5.0,
        num_layers=1,
        num_parameters=5000,
    )
    valid = {} if math.isnan(value) else {metric: value}
    return Result(
        task=task,
        settings=settings,
        hidden_size=8,
        num_parameters=5000,
        metric=metric,
        status=status,
        valid=valid,
    )


def test_best_values_ratios_and_fitness():
    history = History()
    for learning_rate, value in ((0.1, 0.4), (0.2, 0.5), (0.3, 0.45)):
        history.add("gru", outcome("arith", learning_rate, value))
        history.add("gru", outcome("xml", learning_rate, value / 2))
    history.add("cell", outcome("arith", 0.1, 0.55))
    history.add("cell", outcome("arith", 0.2, math.nan, status=DIVERGED))
    history.add("cell", outcome("xml", 0.5, 0.2))
    assert history.best_value("gru", "arith") == 0.5 and history.best_value("cell", "arith") == 0.55
    assert history.ratio("cell", "gru", "arith") == pytest.approx(1.1)
    assert history.ratio("cell", "gru", "xml") == pytest.approx(0.8)
    assert history.fitness("cell", "gru", ["arith", "xml"]) == pytest.approx(0.8)  # the minimum
    assert [s.learning_rate for s in history.best_settings("gru", "arith", 2)] == [0.2, 0.3]
    assert [s.learning_rate for s in history.best_settings("cell", "arith", 5)] == [
        0.1
    ]  # no failed
    assert history.count("cell", "arith") == 2 and history.total == 9
    with pytest.raises(ValueError):
        history.add("cell", outcome("xml", 0.5, 0.3))


def test_no_successful_run_means_nan():
    history = History()
    history.add("gru", outcome("arith", 0.1, 0.5))
    history.add("cell", outcome("arith", 0.1, math.nan, status=DIVERGED))
    assert math.isnan(history.ratio("cell", "gru", "arith"))
    assert math.isnan(history.fitness("cell", "gru", ["arith"]))
    assert math.isnan(history.ratio("unknown", "gru", "arith"))
    assert not history.passed("cell", "arith", 0.0)


def test_a_lower_is_better_metric_inverts_the_ratio():
    history = History()
    history.add("gru", outcome("nottingham", 0.1, 4.0, metric="nll"))
    history.add("gru", outcome("nottingham", 0.2, 3.0, metric="nll"))
    history.add("cell", outcome("nottingham", 0.1, 2.5, metric="nll"))
    assert history.best_value("gru", "nottingham") == 3.0
    assert history.ratio("cell", "gru", "nottingham") == pytest.approx(1.2)


def test_a_run_that_diverged_after_good_epochs_counts_with_its_best_epoch():
    # The trainer keeps the metrics of the best epoch before a divergence: the search compares
    # them like any other validation metric, for the best value, the §3.3 pools and the GRU.
    history = History()
    history.add("gru", outcome("arith", 0.1, 0.5))
    history.add("gru", outcome("arith", 0.2, 0.8, status=DIVERGED))
    history.add("cell", outcome("arith", 0.1, 0.6, status=DIVERGED))
    history.add("cell", outcome("arith", 0.2, 0.3))
    history.add("cell", outcome("arith", 0.3, math.nan, status=DIVERGED))  # diverged at once
    history.add("cell", outcome("memorize", 0.1, 0.97, status=DIVERGED))
    assert history.best_value("gru", "arith") == 0.8 and history.best_value("cell", "arith") == 0.6
    assert history.ratio("cell", "gru", "arith") == pytest.approx(0.75)
    assert [s.learning_rate for s in history.best_settings("cell", "arith", 5)] == [0.1, 0.2]
    assert history.passed("cell", "memorize", 0.95)
    history.add("cell", outcome("xml", 0.1, math.inf, status=DIVERGED))  # never a number to rank
    assert math.isnan(history.best_value("cell", "xml"))


def test_count_through_counts_the_results_of_steps_up_to_one_in_any_order():
    from cellsearch.evaluation.settings import Settings
    from tests.search.scripted import result

    history = History()
    steps = [0, 0, 3, 1, 5, 2, 2]
    for index, step in enumerate(steps):
        settings = Settings(init_scale=1.0, learning_rate=0.1 * (index + 1), max_grad_norm=5.0,
                            num_layers=1, num_parameters=5000)
        history.add("a", result("arith", settings, 0.5), step)
        for through in (-1, 0, 1, 2, 3, 4, 5, 2, 0):
            assert history.count_through(through) == sum(s <= through for s in steps[: index + 1])
