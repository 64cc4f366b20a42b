"""Named search configurations embedded in the package (`cellsearch search --preset NAME`).

`tiny` is the demo and CI setting: the synthetic tasks only (arith, xml, and memorize as the
filter), one-layer models of 3,000 parameters, two settings per task, one short epoch, small
fixed validation and test sets, six steps; it runs on a laptop CPU in about a minute. Its filter threshold is lowered because models this small, trained this briefly, stay
at chance on memorize: with the paper's 95% no candidate would ever pass, and the demo would show
nothing but discarded cells. These are demo values, not the paper's.
"""

from __future__ import annotations

import copy
from typing import Any

from cellsearch.errors import UserError

_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "tasks": ["arith", "xml"],
        # Two-window-long training leaves memorize at chance (1/26): 0.03 lets through every
        # child that trains without diverging, so the demo reaches the task stages.
        "filter_threshold": 0.03,
        "task_threshold": 0.9,
        "settings_per_task": 2,
        "best_settings": 10,
        "experienced_parent": 6,
        "initial_settings": 2,
        "top_size": 10,
        "space_overrides": {
            "memorize": {"num_parameters": [3000], "num_layers": [1]},
            "arith": {"num_parameters": [3000], "num_layers": [1]},
            "xml": {"num_parameters": [3000], "num_layers": [1]},
        },
        "evaluation_options": {
            "max_epochs": 1, "epoch_windows": 10, "valid_samples": 100, "test_samples": 100,
        },
        "max_steps": 6,
    },
}


def preset_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def preset_config(name: str) -> dict[str, Any]:
    """A fresh copy of the settings of preset `name`."""
    if name not in _PRESETS:
        raise UserError(f"unknown preset {name!r}; known: {', '.join(_PRESETS)}")
    return copy.deepcopy(_PRESETS[name])
