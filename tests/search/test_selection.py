"""§3.3: the mix of settings a candidate is evaluated on."""

from __future__ import annotations

import random
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from cellsearch.cells import zoo
from cellsearch.evaluation.settings import SearchSpace
from cellsearch.search import History, Search
from cellsearch.search.selection import (
    DEFAULT_MIX,
    EXPERIENCED_MIX,
    allocate,
    choose_settings,
    sources_for,
)
from tests.search.scripted import CHILD, always, drive, result, stage_keys, varied
from tests.search.test_procedure import config

SPACE = SearchSpace.for_search("arith")  # 1680 settings
TASKS = ("arith", "xml")
THIRDS = list(DEFAULT_MIX)


def test_allocation_follows_the_fractions_exactly():
    assert allocate(20, list(EXPERIENCED_MIX)) == [16, 4]
    assert allocate(20, THIRDS) == [7, 7, 6]
    assert allocate(2, THIRDS) == [1, 1, 0]
    assert allocate(1, THIRDS) == [1, 0, 0]
    assert allocate(0, THIRDS) == [0, 0, 0]


@given(st.integers(0, 500), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_allocation_sums_to_the_count_and_stays_within_one(count, weights):
    fractions = [Fraction(weight, sum(weights)) for weight in weights]
    counts = allocate(count, fractions)
    assert sum(counts) == count
    assert all(
        abs(share - count * fraction) < 1 for share, fraction in zip(counts, fractions, strict=True)
    )


def pool(learning_rate: float):
    """Settings identifiable by their learning rate."""
    return [settings for settings in SPACE.grid(seed=11) if settings.learning_rate == learning_rate]


def test_each_source_supplies_its_share():
    rng = random.Random(1)
    chosen = choose_settings(
        rng, SPACE, 20, set(), [(THIRDS[0], None), (THIRDS[1], pool(0.1)), (THIRDS[2], pool(0.2))]
    )
    rates = [settings.learning_rate for settings in chosen]
    assert len(chosen) == len({settings.key() for settings in chosen}) == 20
    # Random draws may land in a pool's subspace too, so the pools supply at least their share.
    assert rates.count(0.1) >= 7 and rates.count(0.2) >= 6
    assert all(settings.seed != 11 for settings in chosen)  # drawn from a pool with a fresh seed


def test_experienced_parent_mix():
    chosen = choose_settings(
        random.Random(2),
        SPACE,
        20,
        set(),
        [(EXPERIENCED_MIX[0], pool(0.3)), (EXPERIENCED_MIX[1], None)],
    )
    assert sum(settings.learning_rate == 0.3 for settings in chosen) >= 16


def test_tried_settings_are_never_chosen_and_a_short_pool_is_filled_at_random():
    tried = {settings.key() for settings in pool(0.1)[:200]}
    small_pool = pool(0.1)[195:205]  # 5 tried, 5 untried
    chosen = choose_settings(random.Random(3), SPACE, 12, tried, [(Fraction(1), small_pool)])
    keys = {settings.key() for settings in chosen}
    assert len(keys) == 12 and not keys & tried
    assert {settings.key() for settings in small_pool[5:]} <= keys


def test_an_exhausted_space_gives_what_is_left():
    space = SearchSpace.for_search(
        "arith",
        {
            "init_scale": (1.0,),
            "learning_rate": (0.1,),
            "max_grad_norm": (5.0,),
            "num_layers": (1, 2),
            "num_parameters": (5000,),
        },
    )
    tried = {next(iter(space.grid())).key()}
    chosen = choose_settings(random.Random(4), space, 20, tried, [(Fraction(1), None)])
    assert [settings.num_layers for settings in chosen] == [2]


def test_sources_depend_on_the_parents_experience():
    history = History()
    lstm, gru, parent = zoo.get("lstm").canonical_hash(), zoo.get("gru").canonical_hash(), "parent"
    grid = list(SPACE.grid())
    for index, settings in enumerate(grid[:430]):
        history.add(parent, result("arith", settings, index / 1000))
        history.add(lstm, result("arith", settings, 0.5 - index / 1000))
        history.add(gru, result("arith", settings, index / 2000))

    (best, best_pool), (random_share, random_pool) = sources_for(
        history, "arith", parent, (lstm, gru), 100, 420, TASKS
    )
    assert (best, random_share, random_pool) == (*EXPERIENCED_MIX, None)
    assert best_pool == grid[429:329:-1]  # the parent's best 100, best first

    sources = sources_for(history, "arith", parent, (lstm, gru), 100, 430, TASKS)  # not > 430
    assert [fraction for fraction, _ in sources] == THIRDS and sources[0][1] is None
    # The union of LSTM's best 100 and GRU's best 100.
    assert {s.key() for s in sources[1][1]} == {s.key() for s in grid[:100] + grid[330:430]}
    assert len(sources[2][1]) == 430
    assert sources_for(history, "arith", None, (lstm, gru), 100, 420, TASKS)[2] == (
        THIRDS[2],
        None,
    )


def test_a_parents_experience_counts_its_settings_on_every_search_task():
    # §3.3's "evaluated on more than 420 different hyperparameters", like §3.4's 220 settings
    # per architecture, is a total over the tasks: 250 arith + 200 xml settings make 450 > 420,
    # though neither task alone passes 420. Memorization filter runs are not counted.
    history = History()
    lstm, gru, parent = zoo.get("lstm").canonical_hash(), zoo.get("gru").canonical_hash(), "parent"
    xml_grid = list(SearchSpace.for_search("xml").grid())
    memorize = next(iter(SearchSpace.for_search("memorize").grid()))
    for index, settings in enumerate(list(SPACE.grid())[:250]):
        history.add(parent, result("arith", settings, index / 1000))
    for settings in xml_grid[:170]:
        history.add(parent, result("xml", settings, 0.3))
    history.add(parent, result("memorize", memorize, 0.99))
    # 420 task settings (and one filter run) are not more than 420.
    sources = sources_for(history, "arith", parent, (lstm, gru), 100, 420, TASKS)
    assert [fraction for fraction, _ in sources] == THIRDS
    for settings in xml_grid[170:200]:
        history.add(parent, result("xml", settings, 0.3))
    (best, best_pool), (random_share, _) = sources_for(
        history, "arith", parent, (lstm, gru), 100, 420, TASKS
    )
    assert (best, random_share) == EXPERIENCED_MIX
    # The best 100 of the task at hand.
    assert [s.key() for s in best_pool] == [s.key() for s in list(SPACE.grid())[249:149:-1]]


def test_a_child_of_an_experienced_parent_takes_most_settings_from_its_best():
    # LSTM and GRU have the full grid (1680 > 420 settings): whichever is the parent, 16 of the
    # child's 20 arith settings come from the parent's best 100.
    search_config = config(
        settings_per_task=20, space_overrides={"memorize": {"num_parameters": [5000]}}
    )
    search = Search(search_config, always(CHILD))
    score = varied(0.4, 0.2)
    drive(search, 0, score)
    requests = drive(
        search, 1, lambda h, task, s: 0.99 if task == "memorize" else score(h, task, s)
    )
    parent = [
        request.record
        for request in requests
        if hasattr(request, "record") and getattr(request.record, "parent_hash", None)
    ]
    best = {s.key() for s in search.history.best_settings(parent[0].parent_hash, "arith", 100)}
    keys = stage_keys(requests, "arith")
    assert len(keys) == 20 and sum(key in best for key in keys) >= 16
