"""The §3.7 hyperparameter space: values per task, grid order, sampling without repeats, CLI --set."""

import collections
import json
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellsearch.errors import UserError
from cellsearch.evaluation.settings import (
    KEYS,
    SearchSpace,
    Settings,
    parse_assignments,
)

PAPER_COMMON = dict(
    init_scale=(0.3, 0.7, 1.0, 1.4, 2.0, 2.8),
    learning_rate=(0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
    max_grad_norm=(1.0, 2.5, 5.0, 10.0, 20.0),
    num_layers=(1, 2, 3, 4),
)
NO_PTB_SCHEDULE = dict(max_epoch=(None,), decay=(None,))


# --- the paper's space ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, budgets, dropout",
    [
        ("memorize", (25_000,), (0.0,)),
        ("arith", (250_000, 1_000_000), (0.0,)),
        ("xml", (250_000, 1_000_000), (0.0,)),
        ("nottingham", (100_000, 1_000_000), (0.0, 0.1, 0.3, 0.5)),
        ("piano-midi", (100_000, 1_000_000), (0.0, 0.1, 0.3, 0.5)),
        ("jsb", (100_000, 1_000_000), (0.0, 0.1, 0.3, 0.5)),
        ("musedata", (100_000, 1_000_000), (0.0, 0.1, 0.3, 0.5)),
    ],
)
def test_paper_values_without_ptb_schedule(task, budgets, dropout):
    space = SearchSpace.for_task(task)
    assert space.choices == dict(**PAPER_COMMON, num_parameters=budgets, dropout=dropout, **NO_PTB_SCHEDULE)
    assert space.size == 6 * 7 * 5 * 4 * len(budgets) * len(dropout)


def test_paper_values_for_ptb():
    space = SearchSpace.for_task("ptb")
    assert space.choices == dict(
        **PAPER_COMMON,
        num_parameters=(5_000_000,),
        dropout=(0.0, 0.1, 0.3, 0.5),
        max_epoch=(4, 7, 11),
        decay=(0.5, 0.65, 0.8),
    )
    assert space.size == 840 * 4 * 3 * 3 == 30_240


def test_search_space_has_no_dropout_and_no_ptb_schedule():
    space = SearchSpace.for_search("ptb")
    assert space.choices == dict(**PAPER_COMMON, num_parameters=(5_000_000,), dropout=(0.0,), **NO_PTB_SCHEDULE)
    assert space.size == 840
    assert SearchSpace.for_search("arith") == SearchSpace.for_task("arith")
    assert SearchSpace.for_search("ptb", {"num_parameters": (9000,)}).num_parameters == (9000,)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task 'mnist'; known tasks: memorize, arith, xml, ptb"):
        SearchSpace.for_task("mnist")


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_replace_value_tuples():
    space = SearchSpace.for_task("arith", {"num_parameters": (5000,), "learning_rate": [1, 0.5]})
    assert space.num_parameters == (5000,)
    assert space.learning_rate == (1.0, 0.5)  # normalized to floats, order kept
    assert space.size == 6 * 2 * 5 * 4
    # values outside the paper's, within range, are allowed in overrides
    assert SearchSpace.for_task("ptb", {"dropout": (0.2,), "decay": (1.0,)}).dropout == (0.2,)


@pytest.mark.parametrize(
    "task, overrides, message",
    [
        ("arith", {"num_layers": (0,)}, "num_layers must be an integer >= 1"),
        ("arith", {"num_layers": (1.5,)}, "num_layers must be an integer >= 1"),
        ("arith", {"num_layers": (10**600,)}, "num_layers must be at most 1,000, got 1000"),
        ("arith", {"num_parameters": (True,)}, "num_parameters must be an integer >= 1"),
        ("arith", {"learning_rate": (-1.0,)}, "learning_rate must be a positive number"),
        ("arith", {"init_scale": (float("nan"),)}, "init_scale must be a positive number"),
        ("ptb", {"dropout": (1.0,)}, r"dropout must be a number in \[0, 1\)"),
        ("ptb", {"decay": (0.0,)}, r"decay must be a number in \(0, 1\]"),
        ("arith", {"learning_rate": ()}, "learning_rate needs a non-empty tuple"),
        ("arith", {"learning_rate": 0.5}, "override for learning_rate must be a tuple"),
        ("arith", {"learning_rate": (0.5, 0.5)}, "learning_rate lists a value twice"),
        ("arith", {"lr": (0.5,)}, "unknown hyperparameter 'lr' in overrides; known: init_scale,"),
        ("arith", {"max_epoch": (4,)}, "max_epoch and decay go together"),
        ("ptb", {"max_epoch": (None, 4)}, "max_epoch mixes None with values"),
    ],
)
def test_bad_overrides(task, overrides, message):
    with pytest.raises(UserError, match=message):
        SearchSpace.for_task(task, overrides)


# --- Settings ------------------------------------------------------------------------------------


def settings(**change):
    values = dict(init_scale=1, learning_rate=0.5, max_grad_norm=5, num_layers=2, num_parameters=250_000)
    return Settings(**(values | change))


def test_settings_normalize_numbers():
    s = settings()
    assert type(s.init_scale) is float and s.init_scale == 1.0
    assert type(s.num_layers) is int
    assert (s.dropout, s.max_epoch, s.decay, s.seed) == (0.0, None, None, 0)


def test_key_ignores_seed_and_number_spelling():
    assert settings(seed=1).key() == settings(seed=2).key() == settings(init_scale=1.0).key()
    assert settings(learning_rate=1).key() != settings().key()
    assert json.loads(settings().key()) == dict(
        init_scale=1.0, learning_rate=0.5, max_grad_norm=5.0, num_layers=2, num_parameters=250_000,
        dropout=0.0, max_epoch=None, decay=None,
    )


def test_settings_json_round_trip():
    s = settings(dropout=0.3, max_epoch=7, decay=0.65, seed=12345)
    text = json.dumps(s.to_dict())
    assert Settings.from_dict(json.loads(text)) == s
    assert s.to_dict()["seed"] == 12345


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: settings(max_epoch=4), "max_epoch and decay go together"),
        (lambda: settings(seed=-1), "seed must be an integer"),
        (lambda: settings(seed=2**63), "seed must be an integer"),
        (lambda: settings(num_layers="2"), "num_layers must be an integer"),
        (lambda: Settings.from_dict({"init_scale": 1, "lr": 1}), "unknown hyperparameter"),
        (lambda: Settings.from_dict({"init_scale": 1}), "settings lack learning_rate, max_grad_norm"),
    ],
)
def test_bad_settings(build, message):
    with pytest.raises(UserError, match=message):
        build()


@given(index=st.integers(0, 30_239), seed=st.integers(0, 2**63 - 1))
def test_round_trip_and_membership_of_any_ptb_point(index, seed):
    space = SearchSpace.for_task("ptb")
    point = space._at(index)
    s = Settings.from_dict(json.loads(json.dumps(point.to_dict() | {"seed": seed})))
    assert s.key() == point.key() and s.seed == seed
    assert s in space
    space.validate(s)


# --- grid, validate ------------------------------------------------------------------------------


def test_grid_order_is_fixed_last_key_fastest():
    space = SearchSpace.for_task("ptb")
    grid = list(space.grid())
    assert len(grid) == space.size == len({s.key() for s in grid})
    first, second, fourth = grid[0], grid[1], grid[3]
    assert (first.init_scale, first.learning_rate, first.num_layers, first.max_epoch, first.decay) == (
        0.3, 0.1, 1, 4, 0.5,
    )
    assert (second.max_epoch, second.decay, second.dropout) == (4, 0.65, 0.0)
    assert (fourth.max_epoch, fourth.decay) == (7, 0.5)
    assert grid[-1].key() == settings(
        init_scale=2.8, learning_rate=5, max_grad_norm=20, num_layers=4, num_parameters=5_000_000,
        dropout=0.5, max_epoch=11, decay=0.8,
    ).key()
    assert [s.key() for s in space.grid()] == [s.key() for s in grid]
    assert all(space._at(i) == s for i, s in enumerate(grid))


def test_validate_names_the_bad_value():
    space = SearchSpace.for_task("arith")
    space.validate(settings())
    with pytest.raises(UserError, match=r"learning_rate=0.4 is outside the arith search space; allowed: \{0.1, "):
        space.validate(settings(learning_rate=0.4))
    with pytest.raises(UserError, match=r"num_parameters=5000 .* allowed: \{250000, 1000000\}"):
        space.validate(settings(num_parameters=5000))
    with pytest.raises(UserError, match="dropout=0.5"):
        space.validate(settings(dropout=0.5))
    assert settings(dropout=0.5) not in space and settings() in space


# --- sample --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rng", [random.Random(0), np.random.default_rng(0)], ids=["random", "numpy"])
def test_sample_never_repeats_and_reports_exhaustion(rng):
    space = SearchSpace.for_task("memorize", {"init_scale": (1.0, 2.0), "learning_rate": (0.5, 1.0, 2.0)})
    assert space.size == 2 * 3 * 5 * 4
    seen = set()
    for _ in range(space.size):
        s = space.sample(rng, seen)
        assert s is not None and s.key() not in seen and s in space
        seen.add(s.key())
    assert seen == {s.key() for s in space.grid()}
    assert space.sample(rng, seen) is None


def test_sample_is_uniform_over_what_is_left():
    space = SearchSpace.for_task(
        "arith",
        {"init_scale": (1.0,), "learning_rate": (0.1, 0.2, 0.3, 0.5), "max_grad_norm": (5.0,),
         "num_layers": (1,), "num_parameters": (5000,)},
    )
    excluded = {next(space.grid()).key()}  # learning_rate 0.1 is used up
    for rng in (random.Random(1), np.random.default_rng(1)):
        counts = collections.Counter(space.sample(rng, excluded).learning_rate for _ in range(3000))
        assert set(counts) == {0.2, 0.3, 0.5}
        # each expects 1000; +-150 is more than 5 standard deviations (sd = 25.8)
        assert all(850 < count < 1150 for count in counts.values())


def test_sample_finds_the_last_configuration_in_a_nearly_used_space():
    space = SearchSpace.for_task("ptb")
    keys = [s.key() for s in space.grid()]
    last = keys[12_345]
    excluded = set(keys) - {last}
    assert space.sample(random.Random(3), excluded).key() == last


def test_sample_ignores_keys_from_other_spaces_and_draws_fresh_seeds():
    space = SearchSpace.for_task("memorize", {"num_layers": (1,), "max_grad_norm": (5.0,), "init_scale": (1.0,)})
    foreign = {settings(num_parameters=123).key()}
    rng = random.Random(5)
    draws = [space.sample(rng, foreign) for _ in range(50)]
    assert all(d is not None for d in draws)
    seeds = [d.seed for d in draws]
    assert len(set(seeds)) == 50 and all(0 <= seed < 2**31 for seed in seeds)


def test_sample_is_reproducible_for_a_seeded_rng():
    space = SearchSpace.for_task("ptb")
    assert space.sample(random.Random(7)) == space.sample(random.Random(7))
    assert space.sample(np.random.default_rng(7)) == space.sample(np.random.default_rng(7))


def test_sample_rejects_other_rngs():
    with pytest.raises(TypeError, match="rng must be"):
        SearchSpace.for_task("arith").sample(42)


# --- parse_assignments ---------------------------------------------------------------------------


def test_parse_assignments_gives_overrides():
    overrides = parse_assignments(["learning_rate=0.5,1", "num_layers=2", " num_parameters = 5000"], "arith")
    assert overrides == {"learning_rate": (0.5, 1.0), "num_layers": (2,), "num_parameters": (5000,)}
    space = SearchSpace.for_task("arith", overrides)
    assert space.size == 6 * 2 * 5 * 1 * 1
    assert parse_assignments(["max_epoch=4", "decay=0.65", "dropout=0"], "ptb") == {
        "max_epoch": (4,), "decay": (0.65,), "dropout": (0.0,),
    }
    assert parse_assignments(["num_parameters=20000000"], "ptb") == {"num_parameters": (20_000_000,)}


@pytest.mark.parametrize(
    "assignments, message",
    [
        (["lr=0.5"], "unknown hyperparameter 'lr' in --set; known: init_scale, learning_rate, max_grad_norm"),
        (["learning_rate"], "--set expects key=value"),
        (["learning_rate="], "--set expects key=value"),
        (["learning_rate=fast"], "learning_rate must be a number, got 'fast'"),
        (["num_layers=2.5"], "num_layers must be an integer, got '2.5'"),
        (["learning_rate=0.4"], r"learning_rate=0.4 is outside the arith search space; allowed: \{0.1, 0.2"),
        (["num_layers=5"], r"allowed: \{1, 2, 3, 4\}"),
        (["dropout=0.5"], "outside the arith search space"),
        (["max_epoch=4"], "max_epoch is not a hyperparameter of task arith"),
        (["num_parameters=0"], "num_parameters must be an integer >= 1"),
        (["num_layers=1", "num_layers=2"], "num_layers is set twice"),
        (["learning_rate=0.5,0.5"], "learning_rate lists a value twice"),
    ],
)
def test_bad_assignments(assignments, message):
    with pytest.raises(UserError, match=message):
        parse_assignments(assignments, "arith")


def test_keys_are_the_settings_identity_fields():
    assert KEYS == (
        "init_scale", "learning_rate", "max_grad_norm", "num_layers", "num_parameters",
        "dropout", "max_epoch", "decay",
    )


def test_sample_distinct_never_repeats_and_stops_when_the_space_runs_out():
    space = SearchSpace.for_task("memorize", {"learning_rate": (0.5, 1.0), "num_layers": (1,),
                                              "init_scale": (1.0,), "max_grad_norm": (5.0,)})
    first = space.sample_distinct(random.Random(0), 1)
    rest = space.sample_distinct(random.Random(0), 5, exclude={first[0].key()})
    assert len(rest) == 1 and rest[0].key() != first[0].key()
    assert len({s.key() for s in space.sample_distinct(random.Random(1), 9)}) == 2
