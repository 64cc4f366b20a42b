"""Regularized evolution (Real et al. 2019, "Regularized Evolution for Image Classifier
Architecture Search") over the paper's evaluation pipeline: `algorithm = "regularized-evolution"`.

Each step draws `tournament_size` members of the population (the top list, `top_size` long)
uniformly with replacement and mutates the fittest of them; it never re-evaluates. The child
meets the paper's memorization filter and per-task thresholds (§3.1), as a cheap rejection
before it costs a full evaluation; a child that passes joins the population whatever its
fitness, and when the population is full its *oldest* member leaves, not its worst: the aging
that regularizes the search. A member's age is the step its architecture was first recorded
(LSTM and GRU: step 0; ties go by hash), so it is known again after a resume.

Everything else is the paper's procedure (`procedure.Search`): step 0, the settings of §3.3,
fitness, steps in flight and what is deterministic.
"""

from __future__ import annotations

from cellsearch.search.history import HistoryView, fitness_order
from cellsearch.search.procedure import ADDED, KEPT, Search, StepChoice
from cellsearch.storage.records import TopEntry


class RegularizedEvolution(Search):
    def _choose(self, step: int) -> StepChoice:
        if step == 0:
            return super()._choose(step)
        choose = self._rng(step, "choose")
        population = sorted(self.population(step), key=lambda entry: entry.architecture_hash)
        drawn = [choose.choice(population) for _ in range(self.config.tournament_size)]
        fittest = min(drawn, key=lambda entry: (fitness_order(entry.fitness),
                                                entry.architecture_hash))
        return self._mutated(step, fittest.architecture_hash)

    def _admit(self, history: HistoryView, child: str) -> tuple[str, list[TopEntry], str | None]:
        """The child joins; the oldest member leaves a full population."""
        members = [entry.architecture_hash for entry in self.top_list]
        if child in members:
            return KEPT, self._ranked(history, members), None
        oldest = None
        if len(members) >= self.config.top_size:
            oldest = min(members, key=lambda h: (self.architectures[h].created_step, h))
            members.remove(oldest)
        return ADDED, self._ranked(history, [*members, child]), oldest
