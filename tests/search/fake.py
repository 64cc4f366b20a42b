"""Cheap stand-ins for the trainer and the mutation operator, importable by name
("tests.search.fake:evaluate") so the search, its CLI and worker processes can use them.

`evaluate` is a deterministic function of (architecture hash, task, settings key): every
architecture has a quality per task, every setting a factor, and about one run in twenty
diverges. `mutate` returns members of a small family of tanh RNNs (three activations times five
bias inits), so a search re-chooses known architectures often.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Sequence

from cellsearch.cells.equations import parse
from cellsearch.cells.graph import CellGraph
from cellsearch.evaluation.result import DIVERGED, Result
from cellsearch.evaluation.settings import Settings

ACTIVATIONS = ("tanh", "sigm", "relu")
BIAS_INITS = (0.0, 0.5, 1.0, 1.5, 2.0)


def unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from `parts`."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def value_of(architecture_hash: str, task: str, settings: Settings) -> float:
    """The fake validation accuracy (NaN for a diverged run)."""
    key = settings.key()
    if unit("diverge", architecture_hash, task, key) < 0.05:
        return math.nan
    if task == "memorize":
        return (
            0.88
            + 0.1 * unit(architecture_hash, "memorize")
            + 0.04 * unit(architecture_hash, task, key)
        )
    quality = 0.35 + 0.3 * unit(architecture_hash, task)
    return quality * (0.7 + 0.3 * unit(architecture_hash, task, key))


def result_for(
    architecture_hash: str, task: str, settings: Settings, device: str = "cpu"
) -> Result:
    value = value_of(architecture_hash, task, settings)
    common = dict(
        task=task,
        settings=settings,
        hidden_size=8,
        num_parameters=settings.num_parameters,
        metric="accuracy",
        device=device,
    )
    if math.isnan(value):
        return Result(**common, status=DIVERGED, reason="loss became NaN", epochs=1)
    return Result(
        **common,
        valid={"accuracy": value},
        test={"accuracy": value - 0.01},
        epochs=3,
        wall_seconds=0.01,
    )


def evaluate(
    graph: CellGraph,
    task: str,
    settings: Sequence[Settings],
    *,
    device: str = "cpu",
    data_dir: str | None = None,
    sleep: float = 0.0,
    **options: object,
) -> list[Result]:
    """The trainer's signature; `sleep` seconds per setting stand for training time."""
    architecture_hash = graph.canonical_hash()
    if sleep:
        time.sleep(sleep * len(settings))
    return [result_for(architecture_hash, task, item, device) for item in settings]


def raising_evaluate(
    graph: CellGraph, task: str, settings: Sequence[Settings], **options: object
) -> list[Result]:
    raise RuntimeError("the fake trainer broke")


def short_evaluate(
    graph: CellGraph, task: str, settings: Sequence[Settings], **options: object
) -> list[Result]:
    """Forgets the last setting: a malformed answer."""
    return evaluate(graph, task, settings)[:-1]


def dying_evaluate(
    graph: CellGraph, task: str, settings: Sequence[Settings], **options: object
) -> list[Result]:
    """Kills its worker process, as the kernel's OOM killer would."""
    import os

    os._exit(9)


def flaky_evaluate(
    graph: CellGraph, task: str, settings: Sequence[Settings], *, marker: str, **options: object
) -> list[Result]:
    """Kills its worker process the first time it runs, as a preempted node would, and answers
    as `evaluate` when run again (it remembers by creating the file `marker`)."""
    import os

    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return evaluate(graph, task, settings, **options)
    os._exit(9)


@dataclass(frozen=True)
class FakeMutation:
    graph: CellGraph
    description: str
    kinds: tuple[str, ...] = ("fake",)


def family_member(activation: str, bias_init: float) -> CellGraph:
    return parse(f"h' = {activation}(W_xh x + W_hh h + b_h)\ninit b_h = {bias_init}\n")


def mutate(graph: CellGraph, rng: random.Random) -> FakeMutation:
    activation, bias_init = rng.choice(ACTIVATIONS), rng.choice(BIAS_INITS)
    return FakeMutation(
        family_member(activation, bias_init), f"fake: {activation}, b_h starts at {bias_init}"
    )
