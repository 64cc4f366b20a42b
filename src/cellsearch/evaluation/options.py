"""The default trainer's evaluation options, the keywords of `cellsearch.train.evaluate.evaluate`
that a search's `evaluation_options` may set, and the values each allows, checked without torch
so that a search refuses a bad value before it writes anything (instead of recording one failed
or full-size evaluation per setting)."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from cellsearch.errors import quoted
from cellsearch.evaluation.settings import LOSS_NORMALIZATIONS

SCHEDULES = ("search", "music", "ptb")
ENGINES = ("eager", "fused", "compiled")


def _count(minimum: int, optional: bool = True) -> tuple[str, Callable[[Any], bool]]:
    return (
        f"an integer >= {minimum}" + (" or null" if optional else ""),
        lambda value: (value is None and optional)
        or (isinstance(value, int) and not isinstance(value, bool) and value >= minimum),
    )


def _one_of(choices: tuple[str, ...], optional: bool = False) -> tuple[str, Callable[[Any], bool]]:
    return (
        "one of " + ", ".join(choices) + (" or null" if optional else ""),
        lambda value: (value is None and optional) or value in choices,
    )


# option -> (what it allows, the check)
RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "schedule": _one_of(SCHEDULES),
    "max_epochs": _count(1),
    "epoch_windows": _count(1),
    "valid_samples": _count(1),
    "test_samples": _count(1),
    "data_seed": _count(0, optional=False),
    "population_size": _count(1),
    "capture": ("true or false", lambda value: isinstance(value, bool)),
    "engine": _one_of(ENGINES, optional=True),
    "loss_normalization": _one_of(LOSS_NORMALIZATIONS),
}


def option_problems(options: Mapping[str, Any], prefix: str = "evaluation_options.") -> list[str]:
    """One message per option of `options` that the default trainer does not take, or takes
    with other values."""
    problems = []
    for name, value in options.items():
        if name not in RULES:
            problems.append(f"{prefix}{name} is not an option of the trainer; its options are"
                            f" {', '.join(RULES)}")
            continue
        allowed, check = RULES[name]
        if isinstance(value, float) and not math.isfinite(value) or not check(value):
            problems.append(f"{prefix}{name} must be {allowed}, got {quoted(value)}")
    return problems
