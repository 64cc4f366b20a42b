"""Which hyperparameter settings an architecture is evaluated on next (§3.3).

A candidate's settings for a task are drawn from *sources*: pools of known settings, or the whole
space at random. Its parent decides the mix:

- the parent has been evaluated on more than `experienced_parent` (420) settings: 80% from the
  parent's best `best_settings` (100) settings of the task, 20% random;
- otherwise a third each: random; from the best 100 settings of LSTM and of GRU (the union of
  each one's best 100, as both had the full grid); from the settings tried on the parent.

Counts follow the fractions exactly by largest remainder (20 settings: 16 + 4, or 7 + 7 + 6; ties
go to the earlier source). A draw from a pool takes a uniformly chosen pool setting the
architecture has not been evaluated on, with a fresh seed; what a pool cannot supply (too small,
or already tried) is drawn at random instead. Random draws never repeat a tried key either
(§3.1), so fewer settings come back only when the whole space is used up.

Our reading where §3.3 is silent: "evaluated on more than 420 different hyperparameters" counts
the parent's evaluations on all the search's tasks together (not the memorization filter's runs),
as §3.4 counts "220 hyperparameter settings" per architecture over all tasks; the best 100 are
then taken on the task at hand, since a setting is a setting of one task. A top-list member being
re-evaluated (step 1 of §3.1, which points to §3.3 for its distribution) uses the mix with its
own recorded parent, and the initial LSTM and GRU, which have none, draw the parent's share at
random.
"""

from __future__ import annotations

import dataclasses
import random
from fractions import Fraction
from typing import Collection, Sequence

from cellsearch.evaluation.settings import SAMPLED_SEED_LIMIT, SearchSpace, Settings
from cellsearch.search.history import History

# A source is (fraction, pool); a pool of None means "uniformly random over the space".
Source = tuple[Fraction, Sequence[Settings] | None]

EXPERIENCED_MIX = (Fraction(4, 5), Fraction(1, 5))  # parent's best, random
DEFAULT_MIX = (Fraction(1, 3), Fraction(1, 3), Fraction(1, 3))  # random, LSTM & GRU best, parent's


def allocate(count: int, fractions: Sequence[Fraction]) -> list[int]:
    """Split `count` by `fractions` (summing to 1) with the largest-remainder method."""
    exact = [count * fraction for fraction in fractions]
    counts = [int(share) for share in exact]
    by_remainder = sorted(
        range(len(exact)), key=lambda index: (-(exact[index] - counts[index]), index)
    )
    for index in by_remainder[: count - sum(counts)]:
        counts[index] += 1
    return counts


def choose_settings(
    rng: random.Random,
    space: SearchSpace,
    count: int,
    tried: Collection[str],
    sources: Sequence[Source],
) -> list[Settings]:
    """Up to `count` settings of `space` whose keys are not in `tried`, each key once, drawn from
    `sources` as the module docstring says."""
    quotas = allocate(count, [fraction for fraction, _ in sources])
    taken = set(tried)
    chosen: list[Settings] = []
    shortfall = 0
    for (_, pool), quota in zip(sources, quotas, strict=True):
        if pool is None:
            shortfall += quota
            continue
        candidates = _unique(
            [settings for settings in pool if settings in space and settings.key() not in taken]
        )
        picks = rng.sample(candidates, min(quota, len(candidates)))
        for settings in picks:
            chosen.append(reseeded(settings, rng))
            taken.add(settings.key())
        shortfall += quota - len(picks)
    return chosen + space.sample_distinct(rng, shortfall, exclude=taken)


def reseeded(settings: Settings, rng: random.Random) -> Settings:
    """`settings` with a fresh seed, below the limit of the seeds SearchSpace.sample draws."""
    return dataclasses.replace(settings, seed=rng.randrange(SAMPLED_SEED_LIMIT))


def sources_for(
    history: History,
    task: str,
    parent: str | None,
    known_good: Sequence[str],
    best_settings: int,
    experienced_parent: int,
    tasks: Sequence[str],
) -> list[Source]:
    """The §3.3 sources for a child of `parent` on `task`, one of the search's `tasks`, over
    which the parent's experience is counted; `known_good` are LSTM and GRU."""
    experience = 0 if parent is None else sum(history.count(parent, name) for name in tasks)
    if parent is not None and experience > experienced_parent:
        best, random_share = EXPERIENCED_MIX
        return [(best, history.best_settings(parent, task, best_settings)), (random_share, None)]
    pooled = [
        settings
        for name in known_good
        for settings in history.best_settings(name, task, best_settings)
    ]
    tried_on_parent = history.tried_settings(parent, task) if parent is not None else None
    random_share, known_share, parent_share = DEFAULT_MIX
    return [(random_share, None), (known_share, _unique(pooled)), (parent_share, tried_on_parent)]


def _unique(pool: Sequence[Settings]) -> list[Settings]:
    """`pool` without repeated keys, first occurrence kept."""
    seen: set[str] = set()
    unique = []
    for settings in pool:
        if settings.key() not in seen:
            seen.add(settings.key())
            unique.append(settings)
    return unique
