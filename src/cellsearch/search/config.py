"""`SearchConfig`: every number and choice of the search procedure, with the paper's values as
defaults, and how it is read from presets, JSON/TOML files and `--set key=value` overrides.

The paper's values (§3.1, §3.3): tasks arith, xml, ptb in that order; the memorization filter
passes at 95% accuracy on one random setting; a candidate goes on to the next task when its best
accuracy exceeds 90% of the GRU's best; 20 fresh settings per task and step; a parent with more
than 420 evaluated settings (over all tasks, see `selection`) lends its best 100; a top list of
100.

Our choices where the paper is silent (each a key, so it can be changed):

- `reevaluate_probability` = 0.5: how often a step re-evaluates a top-list member instead of
  mutating one. The paper names the two kinds of step but not their mix.
- `initial_settings` = None: LSTM and GRU get the whole grid of each task's space, as in §3.1; a
  number instead samples that many settings per task, for small budgets.
- `job_size` = 20: the most settings one evaluation job trains as a population. The search's
  20-per-task stages are one job each; the initial grid is split so that a crash loses at most
  one job and a process pool can spread the grid.
- `steps_in_flight` = 16: how many steps run at once. Step n plans from the search as it stood
  after step n - 16 (see `procedure.Search`), so that sixteen candidates' jobs keep workers and
  GPUs busy; 1 is the strictly sequential procedure. The paper, which evaluated 230,000 settings,
  does not say how its steps overlapped. It changes which steps see which results, so a resumed
  run keeps it.
- `max_steps`, `max_evaluations` = None: the budget. None means no limit (the search runs until
  interrupted, and resumes later); step 0 (the initial grid) always completes.

`space_overrides` maps a task to `SearchSpace.for_search` overrides (e.g. tiny parameter budgets);
`evaluation_options` are passed to the evaluator as keyword arguments (e.g. `max_epochs`). The
evaluator and the mutation operator are named as "module:function", so tests can put cheap fakes
in their place without any hidden switch.

A resumed run keeps its stored configuration; only the keys in `RESUMABLE_KEYS` may change
(any key may, while the run has stored no evaluation: see `driver.plan_run`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from cellsearch.errors import UserError, gathered, quoted
from cellsearch.evaluation.job import DEFAULT_EVALUATOR
from cellsearch.evaluation.settings import TASKS, SearchSpace
from cellsearch.search.algorithm import ALGORITHMS

DEFAULT_MUTATOR = "cellsearch.cells.mutate:mutate"
# Functions that moved, as databases written before the move name them: they resume.
RENAMED_FUNCTIONS = {"cellsearch.mutate:mutate": DEFAULT_MUTATOR}

# Keys a resumed run may change: its budget (to extend or shorten a run) and how settings are
# grouped into jobs (the evaluator gives the same result for a setting whatever its population).
RESUMABLE_KEYS = frozenset({"max_steps", "max_evaluations", "job_size"})

# Each setting's meaning and where it comes from, for `cellsearch search --list-settings`
# (a test keeps this in step with the fields of SearchConfig).
SETTING_HELP = {
    "tasks": ("the search tasks, in the order a candidate meets them", "§3.1, §3.5"),
    "filter_task": ("the memorization filter's task", "§3.1"),
    "filter_threshold": ("accuracy a candidate must reach on the filter task", "§3.1"),
    "task_threshold": ("fraction of the GRU's best accuracy a candidate must exceed per task",
                       "§3.1"),
    "settings_per_task": ("fresh settings per task in each step", "§3.1"),
    "best_settings": ("how many of a parent's (or LSTM's and GRU's) best settings are drawn from",
                      "§3.3"),
    "experienced_parent": ("a parent with more evaluated settings than this lends 80% of them",
                           "§3.3"),
    "initial_settings": ("settings per task for LSTM and GRU at step 0 (null: the whole grid)",
                         "§3.1; a number is ours"),
    "top_size": ("length of the top list", "§3.1"),
    "reevaluate_probability": ("how often a step re-evaluates a member instead of mutating one",
                               "ours (§3.1 gives no mix)"),
    "space_overrides": ("per task, hyperparameter values replacing §3.7's, e.g."
                        " {arith: {num_parameters: [50000]}}", "§3.7"),
    "evaluation_options": ("keywords for the trainer: max_epochs, epoch_windows, valid_samples,"
                           " test_samples, loss_normalization, engine, ...", "ours"),
    "evaluator": ("the trainer, as module:function", "ours"),
    "mutator": ("the mutation operator, as module:function", "§3.2"),
    "job_size": ("most settings one job trains together as a population", "ours"),
    "algorithm": ("the search algorithm: paper (§3.1's procedure) or regularized-evolution"
                  " (tournament parents, oldest member out)", "§3.1; Real et al. 2019"),
    "tournament_size": ("regularized-evolution: members drawn for each parent's tournament",
                        "Real et al. 2019"),
    "steps_in_flight": ("steps running at once; step n plans from the search after step n - B",
                        "ours (the paper does not say)"),
    "seed": ("the run's seed: every random choice of the search derives from it", "ours"),
    "max_steps": ("last step to run (null: no limit)", "budget"),
    "max_evaluations": ("stop starting steps once this many evaluations are seen (null: no"
                        " limit)", "budget"),
}


@dataclass(frozen=True)
class SearchConfig:
    """The search procedure's configuration; see the module docstring for each choice."""

    tasks: tuple[str, ...] = ("arith", "xml", "ptb")
    filter_task: str = "memorize"
    filter_threshold: float = 0.95
    task_threshold: float = 0.9
    settings_per_task: int = 20
    best_settings: int = 100
    experienced_parent: int = 420
    initial_settings: int | None = None
    top_size: int = 100
    reevaluate_probability: float = 0.5
    space_overrides: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    evaluation_options: Mapping[str, Any] = field(default_factory=dict)
    evaluator: str = DEFAULT_EVALUATOR
    mutator: str = DEFAULT_MUTATOR
    job_size: int = 20
    algorithm: str = "paper"
    tournament_size: int = 25
    steps_in_flight: int = 16
    seed: int = 0
    max_steps: int | None = None
    max_evaluations: int | None = None

    def __post_init__(self) -> None:
        """Check every setting; one UserError listing every problem, a line each."""
        problems: list[str] = []
        check = functools.partial(gathered, problems)
        tasks = check(_checked_tasks, self.tasks, self.filter_task)
        if tasks is not None:
            object.__setattr__(self, "tasks", tasks)
        check(_fraction, "filter_threshold", self.filter_threshold)
        check(_number, "task_threshold", self.task_threshold, 0.0)
        check(_fraction, "reevaluate_probability", self.reevaluate_probability)
        check(_one_of, "algorithm", self.algorithm, tuple(ALGORITHMS))
        check(_integer, "tournament_size", self.tournament_size, 1)
        for name in (
            "settings_per_task", "best_settings", "top_size", "job_size", "steps_in_flight"
        ):
            check(_integer, name, getattr(self, name), 1)
        check(_integer, "experienced_parent", self.experienced_parent, 0)
        check(_integer, "seed", self.seed, 0)
        for name, minimum in (("initial_settings", 1), ("max_steps", 0), ("max_evaluations", 0)):
            if getattr(self, name) is not None:
                check(_integer, name, getattr(self, name), minimum)
        for name in ("evaluator", "mutator"):
            check(_function_name, name, getattr(self, name))
        options = check(_checked_options, self.evaluation_options)
        if options is not None:
            object.__setattr__(self, "evaluation_options", options)
            if self.evaluator == DEFAULT_EVALUATOR:
                from cellsearch.evaluation.options import option_problems

                problems += option_problems(options)
        if tasks is not None:
            overrides = check(self._checked_overrides)
            if overrides is not None:
                object.__setattr__(self, "space_overrides", overrides)
                problems += self._budget_problems()
        if problems:
            raise UserError("\n".join(problems))

    # -- reading and writing ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """A config from plain values (JSON, TOML); UserError naming any unknown key."""
        if not isinstance(data, Mapping):
            raise UserError(
                f"a search configuration must be a table of settings, got {quoted(data)}"
            )
        known = [item.name for item in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(
                f"unknown search setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        renamed = {name: RENAMED_FUNCTIONS[data[name]] for name in ("evaluator", "mutator")
                   if isinstance(data.get(name), str) and data[name] in RENAMED_FUNCTIONS}
        return cls(**{**data, **renamed})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; `from_dict(to_dict())` gives an equal config."""
        data = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        data["tasks"] = list(self.tasks)
        data["space_overrides"] = {
            task: {name: list(values) for name, values in overrides.items()}
            for task, overrides in self.space_overrides.items()
        }
        data["evaluation_options"] = json.loads(json.dumps(dict(self.evaluation_options)))
        return data

    def differing_keys(self, other: SearchConfig) -> list[str]:
        """The keys whose values differ between this config and `other`."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [name for name in mine if mine[name] != theirs[name]]

    # -- derived ----------------------------------------------------------------------------------

    def space(self, task: str) -> SearchSpace:
        """The hyperparameter space the search draws from for `task` (no dropout, §3.5)."""
        return SearchSpace.for_search(task, self.space_overrides.get(task))

    def _budget_problems(self) -> list[str]:
        """The parameter budgets of the spaces that the initial LSTM or GRU cannot meet with
        some number of layers of the space (a model needs at least one hidden unit)."""
        from cellsearch.cells import zoo
        from cellsearch.evaluation.budget import hidden_size_for_budget
        from cellsearch.tasks import model_sizes

        problems = []
        for task in (*self.tasks, self.filter_task):
            choices = self.space(task).choices
            input_size, output_size, input_kind = model_sizes(task)
            for budget in choices["num_parameters"]:
                for layers in choices["num_layers"]:
                    for name in ("lstm", "gru"):
                        graph = zoo.get(name)
                        try:
                            hidden_size_for_budget(
                                budget, matrices_per_layer=graph.num_matrices,
                                biases_per_layer=graph.num_biases, num_layers=layers,
                                input_size=input_size, output_size=output_size,
                                input_kind=input_kind,
                            )
                        except UserError as error:
                            problems.append(f"space_overrides.{task}.num_parameters: {error}")
                            break
        return list(dict.fromkeys(problems))

    def _checked_overrides(self) -> Mapping[str, Mapping[str, tuple[Any, ...]]]:
        overrides = self.space_overrides
        if not isinstance(overrides, Mapping):
            raise UserError(
                f"space_overrides must map task names to overrides, got {quoted(overrides)}"
            )
        checked: dict[str, Mapping[str, tuple[Any, ...]]] = {}
        allowed = (*self.tasks, self.filter_task)
        for task, values in overrides.items():
            if task not in allowed:
                raise UserError(
                    f"space_overrides names task {quoted(task)}, which this search does not use"
                    f" ({', '.join(allowed)})"
                )
            if not isinstance(values, Mapping):
                raise UserError(
                    f"space_overrides.{task} must map hyperparameters to value lists,"
                    f" got {quoted(values)}"
                )
            normalized = {
                name: (tuple(choices) if isinstance(choices, (list, tuple)) else (choices,))
                for name, choices in values.items()
            }
            try:  # UserError for a bad name or value
                space = SearchSpace.for_search(task, normalized)
            except UserError as error:
                raise UserError(f"space_overrides.{task}: {error}") from None
            checked[task] = MappingProxyType({name: space.choices[name] for name in normalized})
        return MappingProxyType(checked)


def settings_listing() -> str:
    """Every setting: its name, default, meaning and source, and whether a resumed run may change
    it; the text of `cellsearch search --list-settings`."""
    defaults = SearchConfig().to_dict()
    lines = []
    for name, (meaning, source) in SETTING_HELP.items():
        default = json.dumps(defaults[name])
        resumable = "; may change when resuming" if name in RESUMABLE_KEYS else ""
        lines.append(f"{name} = {default}\n    {meaning} ({source}{resumable})")
    return "\n".join(lines) + "\n"


def load_config(
    *,
    base: Mapping[str, Any] | None = None,
    preset: str | None = None,
    path: str | Path | None = None,
    assignments: Iterable[str] = (),
) -> SearchConfig:
    """`base` (e.g. a resumed run's stored config), then a preset, then a JSON or TOML file,
    then `--set key=value` assignments, each replacing what came before it."""
    from cellsearch.search.presets import preset_config

    data: dict[str, Any] = json.loads(json.dumps(dict(base or {})))
    if preset is not None:
        data.update(preset_config(preset))
    if path is not None:
        data.update(read_config_file(path))
    for assignment in assignments:
        apply_assignment(data, assignment)
    return SearchConfig.from_dict(data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a `.json` or `.toml` file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no configuration file {path}")
    if path.suffix not in (".json", ".toml"):
        raise UserError(f"{path}: a configuration file must end in .json or .toml")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text: {error.reason} at byte {error.start}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a search configuration") from None
    except ValueError as error:  # JSON and TOML syntax errors, integers of over 4,300 digits
        raise UserError(f"{path}: {quoted(str(error), 200)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of settings")
    return data


def apply_assignment(
    data: dict[str, Any], assignment: str, known: Iterable[str] | None = None
) -> None:
    """Apply one `--set key=value`: the value is read as JSON when it parses (numbers, lists,
    `null`), else as a string; `none` is None. A dotted key reaches into a table:
    `space_overrides.arith.num_parameters=[5000]`, `evaluation_options.max_epochs=2`. The first
    part of the key must be in `known` (default: the search's settings)."""
    name, separator, text = assignment.partition("=")
    name, text = name.strip(), text.strip()
    if not separator or not name:
        raise UserError(f"--set expects key=value (e.g. top_size=10), got {quoted(assignment)}")
    if text.lower() == "none":
        value: Any = None
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        except RecursionError:
            raise UserError(f"--set {quoted(name)}: the value is nested too deeply") from None
        except ValueError as error:  # e.g. an integer of over 4,300 digits
            raise UserError(f"--set {quoted(name)}: {quoted(str(error), 120)}") from None
    *path, last = name.split(".")
    kind = "setting" if known is not None else "search setting"
    known = list(known or (item.name for item in dataclasses.fields(SearchConfig)))
    if (path[0] if path else last) not in known:
        raise UserError(
            f"unknown {kind} {quoted(name.split('.')[0])} in --set; known: {', '.join(known)}"
        )
    target = data
    for part in path:
        child = target.get(part)
        if child is None:
            child = target[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {name}: {part} is not a table")
        target = child
    target[last] = value


def _checked_tasks(tasks: Any, filter_task: Any) -> tuple[str, ...]:
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise UserError(f"search setting tasks must be a list of task names, got {quoted(tasks)}")
    tasks = tuple(tasks)
    names = all(isinstance(task, str) for task in tasks)
    if not tasks or not names or len(set(tasks)) != len(tasks):
        raise UserError(
            f"search setting tasks must list one or more distinct tasks, got {quoted(list(tasks))}"
        )
    for task in (*tasks, filter_task):
        if not isinstance(task, str) or task not in TASKS:
            raise UserError(
                f"unknown task {quoted(task)} in the search settings; known: {', '.join(TASKS)}"
            )
    if filter_task in tasks:
        raise UserError(f"the filter task {filter_task} cannot also be a search task")
    return tasks


def _function_name(name: str, value: Any) -> None:
    if (
        not isinstance(value, str)
        or value.count(":") != 1
        or value.startswith(":")
        or value.endswith(":")
    ):
        raise UserError(
            f"search setting {name} must name a function as 'module:function', got {quoted(value)}"
        )


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(
            f"search setting {name} must be one of {', '.join(choices)}, got {quoted(value)}"
        )


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(
            f"search setting {name} must be an integer >= {minimum}, got {quoted(value)}"
        )


def _number(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise UserError(f"search setting {name} must be a number >= {minimum:g}, got"
                        f" {quoted(value)}")
    if value < minimum:
        raise UserError(f"search setting {name} must be a number >= {minimum:g}, got"
                        f" {quoted(value)}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _fraction(name: str, value: Any) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if not number or not 0 <= value <= 1:
        raise UserError(f"search setting {name} must be a number in [0, 1], got {quoted(value)}")


# Evaluator keywords the search sets itself; an evaluation option of the same name would reach the
# evaluator twice (a TypeError at every evaluation) or silently change what the search asks.
RESERVED_OPTIONS = {
    "device": "chosen with --device, per worker",
    "data_dir": "chosen with --data-dir (or $CELLSEARCH_DATA), per worker",
    "stop_at": "set by the search for the memorization filter (filter_threshold)",
}


def _checked_options(options: Any) -> Mapping[str, Any]:
    if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
        raise UserError(
            f"evaluation_options must map option names to values, got {quoted(options)}"
        )
    reserved = [name for name in RESERVED_OPTIONS if name in options]
    if reserved:
        details = "; ".join(f"{name} is {RESERVED_OPTIONS[name]}" for name in reserved)
        raise UserError(
            f"evaluation_options cannot set {', '.join(reserved)}: {details};"
            " remove it from the configuration"
        )
    try:
        plain = json.loads(json.dumps(dict(options), allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        raise UserError(
            "evaluation_options must hold plain values (finite numbers, strings, lists),"
            f" got {quoted(options)}"
        ) from None
    return MappingProxyType(plain)
