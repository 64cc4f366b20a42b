"""The hyperparameters of one training run and the space they are drawn from (§3.6, §3.7).

`Settings` is one point: the values a trainer needs, plus the member `seed`. `SearchSpace` is the
set of allowed values per hyperparameter for a task, with a deterministic `grid()` (the full sweep
that LSTM and GRU get in §3.1) and `sample()`, uniform random without repeats ("we maintained a
list of the evaluated hyperparameters to avoid evaluating the same hyperparameter configuration
more than once", §3.1). `parse_assignments` reads the CLI's `--set key=value` restrictions.

The paper's space (§3.7, §3.6):

    init_scale      {0.3, 0.7, 1, 1.4, 2, 2.8}     every task
    learning_rate   {0.1, 0.2, 0.3, 0.5, 1, 2, 5}  every task
    max_grad_norm   {1, 2.5, 5, 10, 20}            every task
    num_layers      {1, 2, 3, 4}                   every task
    num_parameters  memorize 25K (§3.1); arith, xml 250K or 1M; music 100K or 1M; ptb 5M
    max_epoch       {4, 7, 11}                     ptb only (the PTB evaluation schedule)
    decay           {0.5, 0.65, 0.8}               ptb only
    dropout         {0, 0.1, 0.3, 0.5}             ptb, and music (Table 2's "N-dropout" column)

The paper gives no dropout range for music; we use PTB's. Table 2's dropout-free "N" column is
`SearchSpace.for_task("nottingham", {"dropout": (0.0,)})`. The architecture search itself used no
dropout (§3.5) and the search schedule ignores max_epoch and decay, so the search must draw from
`SearchSpace.for_search(task)`, which fixes those three; otherwise it would spend evaluations on
PTB settings that differ only in values the search schedule never reads.

This module deliberately does not decide *which* settings the search tries (the mixing of §3.3
lives in the search), nor the hidden size a budget gives (`budget.py`), nor how a learning rate
evolves during training (`schedules.py`). It imports neither torch nor numpy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from cellsearch.errors import UserError, quoted
from cellsearch.evaluation import tasks

# The identity of a setting, in the order grid() varies them (the last one fastest).
KEYS = (
    "init_scale",
    "learning_rate",
    "max_grad_norm",
    "num_layers",
    "num_parameters",
    "dropout",
    "max_epoch",
    "decay",
)
REQUIRED_KEYS = KEYS[:5]  # the others default to "not used": no dropout, no PTB schedule
FLOAT_KEYS = ("init_scale", "learning_rate", "max_grad_norm", "dropout", "decay")

INIT_SCALES = (0.3, 0.7, 1.0, 1.4, 2.0, 2.8)
LEARNING_RATES = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
MAX_GRAD_NORMS = (1.0, 2.5, 5.0, 10.0, 20.0)
NUM_LAYERS = (1, 2, 3, 4)
DROPOUTS = (0.0, 0.1, 0.3, 0.5)
MAX_EPOCHS = (4, 7, 11)
DECAYS = (0.5, 0.65, 0.8)

MUSIC_TASKS = tuple(e.name for e in tasks.ENTRIES if e.schedule == "music")
# What a training window's summed loss is divided by (docs/fidelity.md, "The loss"): the minibatch
# size, as §3.7 and the code the paper builds on do, or the number of targets the window scores.
LOSS_NORMALIZATIONS = ("minibatch", "targets")
# The largest parameter budget accepted: 2**31 float32 weights are 8 GB, beyond one GPU's training.
MAX_PARAMETERS = 2**31
# The deepest stack accepted (the paper's are 1 to 4 layers): a budget spread over more layers
# leaves each a handful of units, and a number of layers beyond any budget would only make the
# budget's error about it unreadably long.
MAX_LAYERS = 1_000
PARAMETER_BUDGETS: Mapping[str, tuple[int, ...]] = {e.name: e.budgets for e in tasks.ENTRIES}
TASKS = tasks.NAMES

# Seeds are stored in SQLite INTEGER columns (signed 64-bit) and handed to torch and numpy.
SEED_LIMIT = 2**63
# sample() draws member seeds below 2**31 so that every RNG library accepts them as they are.
SAMPLED_SEED_LIMIT = 2**31
# Rejection draws before sample() enumerates what is left; see SearchSpace.sample.
_REJECTION_TRIES = 32


@dataclass(frozen=True)
class Settings:
    """The hyperparameters of one training run (one member of a population).

    `max_epoch` and `decay` are set together or not at all: they exist only for the PTB evaluation
    schedule. `seed` drives initialization and dropout masks; it is not part of `key()`, because
    two runs that differ only in their seed are the same hyperparameter configuration for the
    never-repeat rule of §3.1.
    """

    init_scale: float
    learning_rate: float
    max_grad_norm: float
    num_layers: int
    num_parameters: int
    dropout: float = 0.0
    max_epoch: int | None = None
    decay: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # Normalize 1 -> 1.0 (and back for counts) so that equal settings have equal keys.
        for name in KEYS:
            object.__setattr__(self, name, _normalize(name, getattr(self, name)))
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise UserError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if (self.max_epoch is None) != (self.decay is None):
            raise UserError(
                f"max_epoch and decay go together (the PTB schedule needs both), "
                f"got max_epoch={self.max_epoch!r}, decay={self.decay!r}"
            )

    def key(self) -> str:
        """The identity of this configuration without the seed: a canonical JSON string.

        A string rather than a tuple so it can be stored in a database column, read back and put
        in a set unchanged.
        """
        return json.dumps({name: getattr(self, name) for name in KEYS}, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        fields = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        missing = [name for name in REQUIRED_KEYS if name not in data]
        if missing:
            raise UserError(f"settings lack {', '.join(missing)}")
        return cls(**data)


@dataclass(frozen=True)
class SearchSpace:
    """The allowed values of each hyperparameter for one task; see the module docstring.

    Each field is a non-empty tuple without repeats. Fields that a task does not use hold `(None,)`
    (max_epoch, decay) or `(0.0,)` (dropout), so every point of the space is a complete `Settings`.
    """

    task: str
    init_scale: tuple[float, ...]
    learning_rate: tuple[float, ...]
    max_grad_norm: tuple[float, ...]
    num_layers: tuple[int, ...]
    num_parameters: tuple[int, ...]
    dropout: tuple[float, ...]
    max_epoch: tuple[int | None, ...]
    decay: tuple[float | None, ...]

    def __post_init__(self) -> None:
        _check_task(self.task)
        for name in KEYS:
            object.__setattr__(self, name, _normalize_choices(name, getattr(self, name)))
        if (self.max_epoch == (None,)) != (self.decay == (None,)):
            raise UserError(
                f"max_epoch and decay go together: both must be given values or neither, "
                f"got max_epoch={self.max_epoch}, decay={self.decay}"
            )

    @classmethod
    def for_task(cls, task: str, overrides: Mapping[str, Sequence[Any]] | None = None) -> SearchSpace:
        """The paper's space for `task`, with `overrides` replacing whole value tuples.

        An override may use any value of the right type and range, not only the paper's: a tiny
        `{"num_parameters": (5000,)}` for fast tests, `{"num_parameters": (20_000_000,)}` for
        Table 3's 20M PTB models. Ranges: positive numbers, integer counts >= 1, dropout in [0, 1),
        decay in (0, 1].
        """
        _check_task(task)
        schedule = tasks.BY_NAME[task].schedule
        is_ptb = schedule == "ptb"
        choices: dict[str, tuple[Any, ...]] = {
            "init_scale": INIT_SCALES,
            "learning_rate": LEARNING_RATES,
            "max_grad_norm": MAX_GRAD_NORMS,
            "num_layers": NUM_LAYERS,
            "num_parameters": PARAMETER_BUDGETS[task],
            "dropout": DROPOUTS if schedule in ("ptb", "music") else (0.0,),
            "max_epoch": MAX_EPOCHS if is_ptb else (None,),
            "decay": DECAYS if is_ptb else (None,),
        }
        return cls(task=task, **_apply_overrides(choices, overrides))

    @classmethod
    def for_search(cls, task: str, overrides: Mapping[str, Sequence[Any]] | None = None) -> SearchSpace:
        """The space the architecture search draws from: `for_task` without dropout (§3.5) and
        without max_epoch/decay, which the search schedule (§3.6) never reads."""
        choices = cls.for_task(task).choices
        choices.update(dropout=(0.0,), max_epoch=(None,), decay=(None,))
        return cls(task=task, **_apply_overrides(choices, overrides))

    @property
    def choices(self) -> dict[str, tuple[Any, ...]]:
        """A fresh dict from each key of `KEYS` to its allowed values."""
        return {name: getattr(self, name) for name in KEYS}

    @property
    def size(self) -> int:
        """The number of distinct configurations (keys) in the space."""
        return math.prod(len(values) for values in self.choices.values())

    def grid(self, seed: int = 0) -> Iterator[Settings]:
        """Every configuration once, in a fixed order: `KEYS` order, the last key varying fastest,
        each key's values in the order of its tuple. All carry the same `seed`."""
        for values in itertools.product(*self.choices.values()):
            yield Settings(**dict(zip(KEYS, values)), seed=seed)

    def sample(self, rng: random.Random | Any, exclude: Iterable[str] = frozenset()) -> Settings | None:
        """A configuration drawn uniformly from those whose `key()` is not in `exclude`, with a
        fresh random seed; None when every configuration is excluded.

        `rng` is a `random.Random` or a `numpy.random.Generator`. `exclude` is the record of keys
        already evaluated (keys outside this space are ignored). Each draw is first tried by
        rejection, which is uniform over what is left; after `_REJECTION_TRIES` misses (most of the
        space is used up) the remaining configurations are enumerated and one is chosen uniformly,
        so the result is uniform either way and exhaustion is detected exactly.
        """
        excluded = exclude if isinstance(exclude, (set, frozenset)) else frozenset(exclude)
        for _ in range(_REJECTION_TRIES):
            candidate = self._at(_below(rng, self.size))
            if candidate.key() not in excluded:
                return dataclasses.replace(candidate, seed=_below(rng, SAMPLED_SEED_LIMIT))
        remaining = [settings for settings in self.grid() if settings.key() not in excluded]
        if not remaining:
            return None
        chosen = remaining[_below(rng, len(remaining))]
        return dataclasses.replace(chosen, seed=_below(rng, SAMPLED_SEED_LIMIT))

    def sample_distinct(
        self, rng: random.Random | Any, count: int, exclude: Iterable[str] = frozenset()
    ) -> list[Settings]:
        """Up to `count` draws of `sample`, none repeating another or a key in `exclude`
        (fewer when the space runs out)."""
        taken = set(exclude)
        chosen: list[Settings] = []
        while len(chosen) < count:
            settings = self.sample(rng, exclude=taken)
            if settings is None:
                break
            chosen.append(settings)
            taken.add(settings.key())
        return chosen

    def validate(self, settings: Settings) -> None:
        """Raise UserError naming the first hyperparameter of `settings` outside this space."""
        for name, allowed in self.choices.items():
            value = getattr(settings, name)
            if value not in allowed:
                raise UserError(
                    f"{name}={value!r} is outside the {self.task} search space; "
                    f"allowed: {_format_values(allowed)}"
                )

    def __contains__(self, settings: object) -> bool:
        return isinstance(settings, Settings) and all(
            getattr(settings, name) in allowed for name, allowed in self.choices.items()
        )

    def _at(self, index: int) -> Settings:
        """The `index`-th configuration of `grid()`, without walking the grid (mixed radix)."""
        values: list[Any] = []
        for allowed in reversed(self.choices.values()):
            index, digit = divmod(index, len(allowed))
            values.append(allowed[digit])
        return Settings(**dict(zip(KEYS, reversed(values))))


def parse_assignments(assignments: Iterable[str], task: str) -> dict[str, tuple[Any, ...]]:
    """Read CLI `--set key=value[,value...]` strings into `SearchSpace` overrides for `task`.

    Keys are the canonical names of `KEYS` only (no aliases: the same word in code, storage and
    CLI). Values must lie in the paper's space for the task, except `num_parameters`, which may be
    any positive integer (tiny budgets for cheap runs; Table 3's 10M and 20M PTB models). Several
    comma-separated values restrict the key to those values. `seed` is not a space key.
    """
    paper = SearchSpace.for_task(task).choices
    overrides: dict[str, tuple[Any, ...]] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        name = name.strip()
        if not separator or not text.strip():
            raise UserError(f"--set expects key=value (e.g. learning_rate=0.5), got {assignment!r}")
        if name not in KEYS:
            raise UserError(f"unknown hyperparameter {name!r} in --set; known: {', '.join(KEYS)}")
        if name in overrides:
            raise UserError(f"hyperparameter {name} is set twice; give several values as {name}=a,b")
        if paper[name] == (None,):
            raise UserError(f"{name} is not a hyperparameter of task {task} (only ptb has it)")
        values = tuple(_parse_value(name, item.strip()) for item in text.split(","))
        if name != "num_parameters":
            for value in values:
                if value not in paper[name]:
                    raise UserError(
                        f"{name}={value!r} is outside the {task} search space; "
                        f"allowed: {_format_values(paper[name])}"
                    )
        overrides[name] = _normalize_choices(name, values)
    return overrides


def _apply_overrides(
    choices: dict[str, tuple[Any, ...]], overrides: Mapping[str, Sequence[Any]] | None
) -> dict[str, tuple[Any, ...]]:
    choices = dict(choices)
    for name, values in (overrides or {}).items():
        if name not in KEYS:
            raise UserError(f"unknown hyperparameter {name!r} in overrides; known: {', '.join(KEYS)}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise UserError(f"override for {name} must be a tuple of values, e.g. (5000,), got {values!r}")
        choices[name] = tuple(values)
    return choices


def _normalize_choices(name: str, values: object) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise UserError(f"{name} needs a non-empty tuple of allowed values, got {values!r}")
    normalized = tuple(_normalize(name, value) for value in values)
    if len(set(normalized)) != len(normalized):
        raise UserError(f"{name} lists a value twice: {_format_values(normalized)}")
    if None in normalized and len(normalized) > 1:
        raise UserError(f"{name} mixes None with values: {_format_values(normalized)}")
    return normalized


def _normalize(name: str, value: Any) -> Any:
    """`value` as the type `name` holds (float or int), or UserError naming the rule it breaks."""
    if name in ("init_scale", "learning_rate", "max_grad_norm"):
        return _number(name, value, lambda x: x > 0, "a positive number")
    if name == "dropout":
        return _number(name, value, lambda x: 0 <= x < 1, "a number in [0, 1)")
    if name == "decay":
        return None if value is None else _number(name, value, lambda x: 0 < x <= 1, "a number in (0, 1]")
    if name == "max_epoch" and value is None:
        return None
    # num_layers, num_parameters, max_epoch
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {quoted(value)}")
    if name == "num_layers" and value > MAX_LAYERS:
        raise UserError(f"num_layers must be at most {MAX_LAYERS:,}, got {quoted(value)}")
    if name == "num_parameters" and value > MAX_PARAMETERS:
        raise UserError(
            f"num_parameters must be at most {MAX_PARAMETERS:,} (a model of 8 GB), got"
            f" {quoted(value)}"
        )
    return int(value)


def _number(name: str, value: Any, accept: Any, description: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be {description}, got {quoted(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number) or not accept(number):
        raise UserError(f"{name} must be {description}, got {quoted(value)}")
    return number


def _parse_value(name: str, text: str) -> Any:
    is_float = name in FLOAT_KEYS
    try:
        value: Any = float(text) if is_float else int(text)
    except ValueError:
        kind = "a number" if is_float else "an integer"
        raise UserError(f"{name} must be {kind}, got {text!r}") from None
    return _normalize(name, value)


def _check_task(task: str) -> None:
    if task not in PARAMETER_BUDGETS:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def _format_values(values: Iterable[Any]) -> str:
    def show(value: Any) -> str:
        # "%g" keeps 1.0 as "1" like the paper, but would print 1_000_000 as "1e+06".
        return "none" if value is None else format(value, "g") if isinstance(value, float) else str(value)

    return "{" + ", ".join(show(value) for value in values) + "}"


def _below(rng: random.Random | Any, n: int) -> int:
    """A uniform integer in [0, n) from either kind of RNG the callers use."""
    if isinstance(rng, random.Random):
        return rng.randrange(n)
    if hasattr(rng, "integers"):
        return int(rng.integers(n))
    raise TypeError(f"rng must be a random.Random or a numpy.random.Generator, got {type(rng).__name__}")
