"""The search procedure of §3.1 as a deterministic state machine: `Search.plan(n)` plans step n,
`Search.conclude(n, ...)` closes it.

A step is a generator of *requests* — record this architecture, evaluate these jobs, record this
filter outcome, complete the step with this top list — that the driver carries out and commits
before resuming the generator. The search itself does no I/O: no SQL, no torch, no processes.
What a step asks for is a function of three things only: the configuration, the state after step
n - B (B = `steps_in_flight`; 1 for the sequential procedure) with the earlier evaluations of
the architecture step n evaluates (see `Search`), and random generators seeded from (config
seed, step number, purpose). What it concludes is a function of the state after step n - 1 and
its own evaluations. So a driver that rebuilds that state from storage after a crash and replays
the steps in flight gets exactly the same requests, and needs to run only the evaluations that
storage does not hold yet.

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

from cellsearch.cells import zoo
from cellsearch.cells.equations import format_graph
from cellsearch.cells.graph import CellGraph
from cellsearch.evaluation.job import EvaluationJob, describe
from cellsearch.evaluation.result import Result
from cellsearch.evaluation.settings import Settings
from cellsearch.search.config import SearchConfig
from cellsearch.search.history import History, HistoryView, fitness_order
from cellsearch.search.selection import choose_settings, reseeded, sources_for
from cellsearch.storage.records import (
    FILTER_EXEMPT,
    FILTER_FAILED,
    FILTER_PASSED,
    ArchitectureRecord,
    StepRecord,
    TopEntry,
)

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

# The mutation operator's contract (cellsearch.cells.mutate.mutate): (graph, rng) -> an object with
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


@dataclass(frozen=True)
class StepChoice:
    """What step n does, drawn from the top list its plan sees: re-evaluate `member`, or mutate
    it into `child` (None when the mutation failed, `mutation` then saying why)."""

    kind: str
    member: str | None = None
    child: CellGraph | None = None
    mutation: str = ""

    def targets(self, initial: Sequence[str]) -> tuple[str, ...]:
        """The architectures the step evaluates."""
        if self.kind == INITIALIZE:
            return tuple(initial)
        if self.kind == REEVALUATE:
            return (self.member,)
        return () if self.child is None else (self.child.canonical_hash(),)


@dataclass(frozen=True)
class StepEnding:
    """How a step's plan ended; `conclude` turns it into the step's record and top list. When
    `candidate` is set, it passed every task and the top-list rule, applied at conclusion, gives
    the outcome; `record.description` then says where it came from."""

    record: StepRecord
    candidate: str | None = None


class Search:
    """The search state, and the plans of its steps.

    Build it from stored state (`cellsearch.search.driver.load_state` does). Step n is `plan(n)`,
    driven to its end, then `conclude(n, ending)`; `step(n)` is both in one generator. The state
    changes only after the driver has carried out (committed) the request that says so.

    Steps in flight. Step n plans from the search as it stood after step n - B, B being
    `config.steps_in_flight` (step 0 for the first B steps): its top list, and the evaluations
    of steps up to n - B; of the architecture it evaluates it also sees the evaluations of every
    earlier step. So up to B steps can run at once, and each step's requests are a function of
    the configuration and of the steps n - B and before, whatever order the evaluations finish
    in. The driver keeps to two rules that make this so: step n starts only once step n - B has
    concluded, and only once every earlier step evaluating the same architecture has finished
    (so no setting of an architecture is ever trained twice). Steps conclude in step order, and
    conclusion applies the top-list rule (§3.1) to the search as it stands after all earlier
    steps. With B = 1 this is the sequential procedure of the paper, step after step.
    """

    def __init__(
        self,
        config: SearchConfig,
        mutate: MutateFunction,
        *,
        architectures: Mapping[str, ArchitectureRecord] | None = None,
        history: History | None = None,
        top_lists: Mapping[int, Sequence[TopEntry]] | None = None,
    ):
        """`top_lists`: the top list after each of the last `steps_in_flight` completed steps,
        by step (none before step 0 completes)."""
        self.config = config
        self.architectures: dict[str, ArchitectureRecord] = dict(architectures or {})
        self.history = history if history is not None else History()
        self._top_lists = {step: tuple(top) for step, top in (top_lists or {}).items()}
        self.completed: int | None = max(self._top_lists, default=None)
        self._mutate = mutate
        self._spaces = {task: config.space(task) for task in (*config.tasks, config.filter_task)}
        self._choices: dict[int, StepChoice] = {}
        self.initial_hashes, self.reference_hash = initial_hashes()

    @property
    def top_list(self) -> tuple[TopEntry, ...]:
        """The top list after the last concluded step."""
        return () if self.completed is None else self._top_lists[self.completed]

    def seen_step(self, step: int) -> int:
        """The last step whose outcome step `step` plans from (-1: none, for step 0)."""
        return -1 if step == 0 else max(0, step - self.config.steps_in_flight)

    def seen_evaluations(self, step: int) -> int:
        """How many evaluations step `step`'s plan sees (for the evaluation budget)."""
        return self.history.count_through(self.seen_step(step))

    # -- the steps --------------------------------------------------------------------------------

    def step(self, step: int) -> StepPlan:
        """Step `step` from start to conclusion (the sequential procedure's step)."""
        ending = yield from self.plan(step)
        yield from self.conclude(step, ending)

    def choice(self, step: int) -> StepChoice:
        """What step `step` does; the top list after `seen_step(step)` must be known."""
        if step not in self._choices:
            self._choices[step] = self._choose(step)
        return self._choices[step]

    def targets(self, step: int) -> tuple[str, ...]:
        """The architectures step `step` evaluates."""
        return self.choice(step).targets(self.initial_hashes)

    def plan(self, step: int) -> Generator[Request, Any, StepEnding]:
        """Step `step` up to its conclusion; see the class docstring."""
        choice = self.choice(step)
        history = self.history.as_of(self.seen_step(step), self.targets(step), step)
        if choice.kind == INITIALIZE:
            return (yield from self._initialize(history))
        if choice.kind == REEVALUATE:
            return (yield from self._reevaluate(step, choice.member, history))
        return (yield from self._mutate_member(step, choice, history))

    def conclude(self, step: int, ending: StepEnding) -> StepPlan:
        """Close step `step`, every earlier step concluded and every evaluation of `step` added:
        the top-list rule for a candidate, the members re-ranked by fitness from all evaluations
        of steps up to `step` (a re-evaluation, of the GRU too, changes estimates)."""
        history = self.history.as_of(step)
        record = ending.record
        if step == 0:
            top = self._ranked(history, self.initial_hashes)
        elif ending.candidate is not None:
            outcome, top, displaced = self._admit(history, ending.candidate)
            fitness = history.fitness(ending.candidate, self.reference_hash, self.config.tasks)
            description = f"{record.description}: fitness {fitness:.4f}, {outcome}" + (
                f", displacing {displaced[:12]}" if displaced else ""
            )
            record = replace(record, outcome=outcome, description=description)
        else:
            top = self._ranked(history)
        yield CompleteStep(record, tuple(top))
        self._top_lists[step] = tuple(top)
        self.completed = step
        self._choices.pop(step, None)
        for old in [seen for seen in self._top_lists if seen <= step - self.config.steps_in_flight]:
            del self._top_lists[old]

    def _choose(self, step: int) -> StepChoice:
        if step == 0:
            return StepChoice(INITIALIZE)
        choose = self._rng(step, "choose")
        member = choose.choice(sorted(entry.architecture_hash for entry in self.population(step)))
        if choose.random() < self.config.reevaluate_probability:
            return StepChoice(REEVALUATE, member)
        return self._mutated(step, member)

    def population(self, step: int) -> tuple[TopEntry, ...]:
        """The top list step `step` chooses from: the one after `seen_step(step)`."""
        seen = self.seen_step(step)
        if seen not in self._top_lists:
            raise RuntimeError(f"step {step} before step {seen} completed")
        return self._top_lists[seen]

    def _mutated(self, step: int, member: str) -> StepChoice:
        """Step `step` mutates `member` (a failed mutation is the step's outcome, not an error)."""
        parent_graph = CellGraph.from_json(self.architectures[member].graph_json)
        try:
            mutation = self._mutate(parent_graph, self._rng(step, "mutate"))
            child: CellGraph = mutation.graph
            child.canonical_hash()
        except Exception as error:  # noqa: BLE001 - one bad mutation must not stop a long search
            reason = f"mutating {member[:12]} failed: {describe(error)}"
            return StepChoice(MUTATE, member, None, reason)
        return StepChoice(MUTATE, member, child, str(getattr(mutation, "description", "")))

    def _initialize(self, history: HistoryView) -> Generator[Request, Any, StepEnding]:
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
        yield from self._evaluate(history, 0, INITIALIZE, jobs)
        count = (
            "every setting"
            if self.config.initial_settings is None
            else f"{self.config.initial_settings} settings"
        )
        return StepEnding(
            StepRecord(
                0, INITIALIZE, None, INITIALIZED, f"LSTM and GRU evaluated on {count} per task"
            )
        )

    def _reevaluate(
        self, step: int, member: str, history: HistoryView
    ) -> Generator[Request, Any, StepEnding]:
        parent = self.architectures[member].parent_hash
        before = history.fitness(member, self.reference_hash, self.config.tasks)
        jobs: list[EvaluationJob] = []
        for task in self.config.tasks:
            settings = self._task_settings(history, step, member, parent, task)
            jobs += self._jobs(member, task, settings)
        yield from self._evaluate(history, step, REEVALUATE, jobs)
        after = history.fitness(member, self.reference_hash, self.config.tasks)
        count = sum(len(job.settings) for job in jobs)
        description = f"re-evaluated on {count} new settings; fitness {before:.4f} -> {after:.4f}"
        return StepEnding(StepRecord(step, REEVALUATE, member, REEVALUATED, description))

    def _mutate_member(
        self, step: int, choice: StepChoice, history: HistoryView
    ) -> Generator[Request, Any, StepEnding]:
        parent = choice.member
        if choice.child is None:
            return StepEnding(StepRecord(step, MUTATE, parent, MUTATION_FAILED, choice.mutation))
        child = choice.child.canonical_hash()
        known = child in self.architectures
        if not known:
            yield from self._record_architecture(
                _record(choice.child, parent, choice.mutation, step, outcome=None)
            )
        origin = f"{'known' if known else 'new'} child {child[:12]} of {parent[:12]}"

        if self._needs_filter(history, child):
            filter_task = self.config.filter_task
            settings = self._spaces[filter_task].sample(
                self._rng(step, filter_task), exclude=history.tried_keys(child, filter_task)
            )
            results: list[Result] = []
            if settings is not None:
                # The filter only asks whether the threshold is reached: training may stop there.
                jobs = self._jobs(
                    child, filter_task, [settings], stop_at=self.config.filter_threshold
                )
                results = yield from self._evaluate(history, step, filter_task, jobs)
            # _needs_filter: no earlier run passed, so this asks about the run just made.
            passed = history.passed(child, filter_task, self.config.filter_threshold)
            outcome = FILTER_PASSED if passed else FILTER_FAILED
            yield RecordFilterOutcome(child, outcome)
            self.architectures[child] = replace(self.architectures[child], filter_outcome=outcome)
            if not passed:
                value = f"{results[0].value:.4f}" if results else "no untried setting"
                description = f"{origin} discarded by the {filter_task} filter ({value})"
                return StepEnding(StepRecord(step, MUTATE, child, FILTERED_OUT, description))

        for task in self.config.tasks:
            settings = self._task_settings(history, step, child, parent, task)
            yield from self._evaluate(history, step, task, self._jobs(child, task, settings))
            ratio = history.ratio(child, self.reference_hash, task)
            if not ratio > self.config.task_threshold:
                description = (
                    f"{origin}: {task} ratio {ratio:.4f} <= {self.config.task_threshold:g}"
                )
                return StepEnding(StepRecord(step, MUTATE, child, BELOW_THRESHOLD, description))
        return StepEnding(StepRecord(step, MUTATE, child, ADDED, origin), candidate=child)

    # -- requests ---------------------------------------------------------------------------------

    def _record_architecture(self, record: ArchitectureRecord) -> StepPlan:
        yield RecordArchitecture(record)
        self.architectures.setdefault(record.hash, record)

    def _evaluate(
        self, history: HistoryView, step: int, stage: str, jobs: Sequence[EvaluationJob]
    ) -> Generator[Request, Any, list[Result]]:
        """Yield one Evaluate request; absorb and return the (committed) results, flattened."""
        if not jobs:
            return []
        answers: Sequence[Sequence[Result]] = yield Evaluate(step, stage, tuple(jobs))
        flat: list[Result] = []
        for job, results in zip(jobs, answers, strict=True):
            for result in results:
                history.add(job.architecture_hash, result)
            flat.extend(results)
        return flat

    # -- rules ------------------------------------------------------------------------------------

    def _needs_filter(self, history: HistoryView, architecture_hash: str) -> bool:
        """§3.1: a re-chosen architecture that passed the filter once does not take it again."""
        if self.architectures[architecture_hash].filter_outcome == FILTER_EXEMPT:
            return False
        return not history.passed(
            architecture_hash, self.config.filter_task, self.config.filter_threshold
        )

    def _initial_settings(self, rng: random.Random, task: str) -> list[Settings]:
        space = self._spaces[task]
        if self.config.initial_settings is None:
            return [reseeded(settings, rng) for settings in space.grid()]
        return space.sample_distinct(rng, self.config.initial_settings)

    def _task_settings(
        self, history: HistoryView, step: int, architecture: str, parent: str | None, task: str
    ) -> list[Settings]:
        sources = sources_for(
            history,
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
            history.tried_keys(architecture, task),
            sources,
        )

    def _admit(self, history: HistoryView, child: str) -> tuple[str, list[TopEntry], str | None]:
        """The top-list rule: (outcome, new ranked list, displaced member or None)."""
        members = [entry.architecture_hash for entry in self.top_list]
        if child in members:
            return KEPT, self._ranked(history, members), None
        if len(members) < self.config.top_size:
            return ADDED, self._ranked(history, [*members, child]), None
        ranked = self._ranked(history, members)
        worst = ranked[-1]
        fitness = history.fitness(child, self.reference_hash, self.config.tasks)
        if not math.isnan(fitness) and (math.isnan(worst.fitness) or fitness > worst.fitness):
            members.remove(worst.architecture_hash)
            return ADDED, self._ranked(history, [*members, child]), worst.architecture_hash
        return NOT_ADDED, ranked, None

    def _ranked(
        self, history: HistoryView, members: Sequence[str] | None = None
    ) -> list[TopEntry]:
        """`members` (default: the current top list) with fresh fitness, best first."""
        if members is None:
            members = [entry.architecture_hash for entry in self.top_list]
        entries = [
            TopEntry(member, history.fitness(member, self.reference_hash, self.config.tasks))
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
