"""The search procedure of §3.1 as a deterministic state machine: `Search.step(n)` plans step n.

A step is a generator of *requests* — record this architecture, evaluate these jobs, record this
filter outcome, complete the step with this top list — that the driver carries out and commits
before resuming the generator. The search itself does no I/O: no SQL, no torch, no processes.
What a step does is a function of three things only: the configuration, the state after step
n-1 (architectures, completed evaluations, top list), and random generators seeded from
(config seed, step number, purpose). So a driver that rebuilds that state from storage after a
crash and replays step n gets exactly the same requests, and needs to run only the evaluations
that storage does not hold yet.

The steps:

- step 0: LSTM and GRU on every setting of each task's space (or `initial_settings` random
  ones); both enter the top list.
- step n >= 1: pick a top-list member uniformly; with probability `reevaluate_probability`
  re-evaluate it on `settings_per_task` fresh settings per task (all tasks at once, step 1 of
  §3.1); otherwise mutate it (step 2 of §3.1):
    1. the child, identified by `canonical_hash()`, is recorded unless known;
    2. unless it passed the memorization filter before (or is LSTM/GRU), it is trained on one
       random untried setting of the filter task and discarded below `filter_threshold` (the job
       passes `stop_at=filter_threshold` to the evaluator: reaching it is all the filter asks);
    3. task by task, it is trained on `settings_per_task` settings chosen as §3.3 says and
       discarded unless its best ratio to the GRU exceeds `task_threshold`;
    4. having passed every task, it joins the top list if the list is not full, or displaces the
       worst member if its fitness is higher; a child already in the list just stays.
  A known architecture keeps its evaluations: it never repeats a (task, settings) pair, and
  one that passed the filter once is not filtered again.
After every step the members are re-ranked by fitness computed from all evaluations, since a
re-evaluation (of the GRU too) changes estimates.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Mapping, Sequence

from cellsearch import zoo
from cellsearch.equations import format_graph
from cellsearch.executors.base import EvaluationJob, describe
from cellsearch.graph import CellGraph
from cellsearch.search.config import SearchConfig
from cellsearch.search.history import History, fitness_order
from cellsearch.search.selection import choose_settings, reseeded, sources_for
from cellsearch.storage.records import (
    FILTER_EXEMPT,
    FILTER_FAILED,
    FILTER_PASSED,
    ArchitectureRecord,
    StepRecord,
    TopEntry,
)
from cellsearch.train.hyperparameters import Settings
from cellsearch.train.result import Result

INITIAL_ARCHITECTURES = ("lstm", "gru")
REFERENCE_ARCHITECTURE = "gru"  # eq. 1 divides by the GRU's best accuracy

# Step kinds and outcomes, as stored in StepRecord.kind / .outcome.
INITIALIZE, REEVALUATE, MUTATE = "initialize", "reevaluate", "mutate"
INITIALIZED, REEVALUATED = "initialized", "reevaluated"
FILTERED_OUT, BELOW_THRESHOLD, ADDED, KEPT, NOT_ADDED = (
    "filtered-out",
    "below-threshold",
    "added",
    "kept",
    "not-added",
)
MUTATION_FAILED = "mutation-failed"

# The mutation operator's contract (cellsearch.mutate.mutate): (graph, rng) -> an object with
# `.graph` (the child CellGraph) and `.description` (what was changed, for people).
MutateFunction = Callable[[CellGraph, random.Random], Any]


# -- requests the driver carries out ------------------------------------------------------------


@dataclass(frozen=True)
class RecordArchitecture:
    """Store `record` (a no-op if the run already holds its hash)."""

    record: ArchitectureRecord


@dataclass(frozen=True)
class Evaluate:
    """Run `jobs` (the stage `stage` of step `step`), commit each job's results, and send back
    one list of Results per job, in job order and, within a job, in settings order."""

    step: int
    stage: str
    jobs: tuple[EvaluationJob, ...]


@dataclass(frozen=True)
class RecordFilterOutcome:
    architecture_hash: str
    outcome: str


@dataclass(frozen=True)
class CompleteStep:
    """Close the step: store `record` and the top list after it, in one transaction."""

    record: StepRecord
    top_list: tuple[TopEntry, ...]


Request = RecordArchitecture | Evaluate | RecordFilterOutcome | CompleteStep
StepPlan = Generator[Request, Any, None]


def initial_architectures() -> dict[str, CellGraph]:
    """The zoo cells the top list starts with, by name."""
    return {name: zoo.get(name) for name in INITIAL_ARCHITECTURES}


def initial_hashes() -> tuple[tuple[str, ...], str]:
    """(the canonical hashes of the initial architectures, that of the reference among them)."""
    hashes = {name: graph.canonical_hash() for name, graph in initial_architectures().items()}
    return tuple(hashes.values()), hashes[REFERENCE_ARCHITECTURE]


class Search:
    """The search state after some completed step, and the plans of the steps that follow.

    Build it from stored state (`cellsearch.search.driver.load_state` does), then for n = next
    step, n + 1, ...: drive `step(n)` to its end. The generator updates this object only after
    the driver has carried out (committed) the request it yielded.
    """

    def __init__(
        self,
        config: SearchConfig,
        mutate: MutateFunction,
        *,
        architectures: Mapping[str, ArchitectureRecord] | None = None,
        history: History | None = None,
        top_list: Sequence[TopEntry] = (),
    ):
        self.config = config
        self.architectures: dict[str, ArchitectureRecord] = dict(architectures or {})
        self.history = history if history is not None else History()
        self.top_list: tuple[TopEntry, ...] = tuple(top_list)
        self._mutate = mutate
        self._spaces = {task: config.space(task) for task in (*config.tasks, config.filter_task)}
        self.initial_hashes, self.reference_hash = initial_hashes()

    # -- the steps --------------------------------------------------------------------------------

    def step(self, step: int) -> StepPlan:
        """The plan of step `step`; see the module docstring."""
        if step == 0:
            yield from self._initialize()
            return
        if not self.top_list:
            raise RuntimeError(f"step {step} before step 0 completed")
        choose = self._rng(step, "choose")
        member = choose.choice(sorted(entry.architecture_hash for entry in self.top_list))
        if choose.random() < self.config.reevaluate_probability:
            yield from self._reevaluate(step, member)
        else:
            yield from self._mutate_member(step, member)

    def _initialize(self) -> StepPlan:
        rng = self._rng(0, "initialize")
        for name, graph in initial_architectures().items():
            record = _record(
                graph, parent_hash=None, mutation=f"zoo cell {name}", step=0, outcome=FILTER_EXEMPT
            )
            yield from self._record_architecture(record)
        jobs: list[EvaluationJob] = []
        for architecture_hash in self.initial_hashes:
            for task in self.config.tasks:
                jobs += self._jobs(architecture_hash, task, self._initial_settings(rng, task))
        yield from self._evaluate(0, INITIALIZE, jobs)
        top = self._ranked(self.initial_hashes)
        count = (
            "every setting"
            if self.config.initial_settings is None
            else f"{self.config.initial_settings} settings"
        )
        record = StepRecord(
            0, INITIALIZE, None, INITIALIZED, f"LSTM and GRU evaluated on {count} per task"
        )
        yield from self._complete(record, top)

    def _reevaluate(self, step: int, member: str) -> StepPlan:
        parent = self.architectures[member].parent_hash
        before = self.history.fitness(member, self.reference_hash, self.config.tasks)
        jobs: list[EvaluationJob] = []
        for task in self.config.tasks:
            jobs += self._jobs(member, task, self._task_settings(step, member, parent, task))
        yield from self._evaluate(step, REEVALUATE, jobs)
        after = self.history.fitness(member, self.reference_hash, self.config.tasks)
        count = sum(len(job.settings) for job in jobs)
        description = f"re-evaluated on {count} new settings; fitness {before:.4f} -> {after:.4f}"
        yield from self._complete(
            StepRecord(step, REEVALUATE, member, REEVALUATED, description), self._ranked()
        )

    def _mutate_member(self, step: int, parent: str) -> StepPlan:
        parent_graph = CellGraph.from_json(self.architectures[parent].graph_json)
        try:
            mutation = self._mutate(parent_graph, self._rng(step, "mutate"))
            child_graph: CellGraph = mutation.graph
            description = str(getattr(mutation, "description", ""))
        except Exception as error:  # noqa: BLE001 - one bad mutation must not stop a long search
            reason = f"mutating {parent[:12]} failed: {describe(error)}"
            yield from self._complete(
                StepRecord(step, MUTATE, parent, MUTATION_FAILED, reason), self._ranked()
            )
            return
        child = child_graph.canonical_hash()
        known = child in self.architectures
        if not known:
            yield from self._record_architecture(
                _record(child_graph, parent, description, step, outcome=None)
            )
        origin = f"{'known' if known else 'new'} child {child[:12]} of {parent[:12]}"

        if self._needs_filter(child):
            filter_task = self.config.filter_task
            settings = self._spaces[filter_task].sample(
                self._rng(step, filter_task), exclude=self.history.tried_keys(child, filter_task)
            )
            results: list[Result] = []
            if settings is not None:
                # The filter only asks whether the threshold is reached: training may stop there.
                jobs = self._jobs(
                    child, filter_task, [settings], stop_at=self.config.filter_threshold
                )
                results = yield from self._evaluate(step, filter_task, jobs)
            # _needs_filter: no earlier run passed, so this asks about the run just made.
            passed = self.history.passed(child, filter_task, self.config.filter_threshold)
            outcome = FILTER_PASSED if passed else FILTER_FAILED
            yield RecordFilterOutcome(child, outcome)
            self.architectures[child] = replace(self.architectures[child], filter_outcome=outcome)
            if not passed:
                value = f"{results[0].value:.4f}" if results else "no untried setting"
                description = f"{origin} discarded by the {filter_task} filter ({value})"
                yield from self._complete(
                    StepRecord(step, MUTATE, child, FILTERED_OUT, description), self._ranked()
                )
                return

        for task in self.config.tasks:
            settings = self._task_settings(step, child, parent, task)
            yield from self._evaluate(step, task, self._jobs(child, task, settings))
            ratio = self.history.ratio(child, self.reference_hash, task)
            if not ratio > self.config.task_threshold:
                description = (
                    f"{origin}: {task} ratio {ratio:.4f} <= {self.config.task_threshold:g}"
                )
                yield from self._complete(
                    StepRecord(step, MUTATE, child, BELOW_THRESHOLD, description), self._ranked()
                )
                return

        outcome, top, displaced = self._admit(child)
        fitness = self.history.fitness(child, self.reference_hash, self.config.tasks)
        description = f"{origin}: fitness {fitness:.4f}, {outcome}" + (
            f", displacing {displaced[:12]}" if displaced else ""
        )
        yield from self._complete(StepRecord(step, MUTATE, child, outcome, description), top)

    # -- requests ---------------------------------------------------------------------------------

    def _record_architecture(self, record: ArchitectureRecord) -> StepPlan:
        yield RecordArchitecture(record)
        self.architectures.setdefault(record.hash, record)

    def _evaluate(
        self, step: int, stage: str, jobs: Sequence[EvaluationJob]
    ) -> Generator[Request, Any, list[Result]]:
        """Yield one Evaluate request; absorb and return the (committed) results, flattened."""
        if not jobs:
            return []
        answers: Sequence[Sequence[Result]] = yield Evaluate(step, stage, tuple(jobs))
        flat: list[Result] = []
        for job, results in zip(jobs, answers, strict=True):
            for result in results:
                self.history.add(job.architecture_hash, result)
            flat.extend(results)
        return flat

    def _complete(self, record: StepRecord, top: Sequence[TopEntry]) -> StepPlan:
        yield CompleteStep(record, tuple(top))
        self.top_list = tuple(top)

    # -- rules ------------------------------------------------------------------------------------

    def _needs_filter(self, architecture_hash: str) -> bool:
        """§3.1: a re-chosen architecture that passed the filter once does not take it again."""
        if self.architectures[architecture_hash].filter_outcome == FILTER_EXEMPT:
            return False
        return not self.history.passed(
            architecture_hash, self.config.filter_task, self.config.filter_threshold
        )

    def _initial_settings(self, rng: random.Random, task: str) -> list[Settings]:
        space = self._spaces[task]
        if self.config.initial_settings is None:
            return [reseeded(settings, rng) for settings in space.grid()]
        return space.sample_distinct(rng, self.config.initial_settings)

    def _task_settings(
        self, step: int, architecture: str, parent: str | None, task: str
    ) -> list[Settings]:
        sources = sources_for(
            self.history,
            task,
            parent,
            self.initial_hashes,
            self.config.best_settings,
            self.config.experienced_parent,
            self.config.tasks,
        )
        return choose_settings(
            self._rng(step, f"settings:{task}"),
            self._spaces[task],
            self.config.settings_per_task,
            self.history.tried_keys(architecture, task),
            sources,
        )

    def _admit(self, child: str) -> tuple[str, list[TopEntry], str | None]:
        """The top-list rule: (outcome, new ranked list, displaced member or None)."""
        members = [entry.architecture_hash for entry in self.top_list]
        if child in members:
            return KEPT, self._ranked(members), None
        if len(members) < self.config.top_size:
            return ADDED, self._ranked([*members, child]), None
        ranked = self._ranked(members)
        worst = ranked[-1]
        fitness = self.history.fitness(child, self.reference_hash, self.config.tasks)
        if not math.isnan(fitness) and (math.isnan(worst.fitness) or fitness > worst.fitness):
            members.remove(worst.architecture_hash)
            return ADDED, self._ranked([*members, child]), worst.architecture_hash
        return NOT_ADDED, ranked, None

    def _ranked(self, members: Sequence[str] | None = None) -> list[TopEntry]:
        """`members` (default: the current top list) with fresh fitness, best first."""
        if members is None:
            members = [entry.architecture_hash for entry in self.top_list]
        entries = [
            TopEntry(member, self.history.fitness(member, self.reference_hash, self.config.tasks))
            for member in members
        ]
        return sorted(
            entries, key=lambda entry: (fitness_order(entry.fitness), entry.architecture_hash)
        )

    def _jobs(
        self, architecture_hash: str, task: str, settings: Sequence[Settings], **options: Any
    ) -> list[EvaluationJob]:
        """`settings` as jobs of at most `job_size` settings each, with the evaluation options
        of the config and `options`."""
        graph_json = self.architectures[architecture_hash].graph_json
        size = self.config.job_size
        return [
            EvaluationJob(
                architecture_hash=architecture_hash,
                graph_json=graph_json,
                task=task,
                settings=tuple(settings[start : start + size]),
                options={**self.config.evaluation_options, **options},
                evaluator=self.config.evaluator,
            )
            for start in range(0, len(settings), size)
        ]

    def _rng(self, step: int, purpose: str) -> random.Random:
        # A string seed is hashed with SHA-512 by random.seed: the same stream in every process,
        # whatever PYTHONHASHSEED, so a resumed search draws what an uninterrupted one drew.
        return random.Random(f"cellsearch:{self.config.seed}:{step}:{purpose}")


def _record(
    graph: CellGraph, parent_hash: str | None, mutation: str | None, step: int, outcome: str | None
) -> ArchitectureRecord:
    return ArchitectureRecord(
        hash=graph.canonical_hash(),
        graph_json=graph.to_json(),
        equations=format_graph(graph),
        parent_hash=parent_hash,
        mutation=mutation,
        created_step=step,
        filter_outcome=outcome,
    )
