"""The paper's own numbers (Tables 1-3) and how each column is computed from evaluations.

A column names a task and which of its evaluations count (parameter budget, with or without
dropout), which metric it reports (validation or test, accuracy or nll) and in which direction
it is better. The tables are computed the same way from a reproduction and from a search.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsearch.evaluation.settings import Settings


@dataclass(frozen=True)
class Column:
    """One column of a paper table: the best `split` `metric` of an architecture's evaluations
    on `task` that `counts` (lowest for nll, highest for accuracy). The best setting is chosen by
    validation; a test column reports that setting's test metric."""

    name: str
    task: str
    split: str  # "valid" or "test"
    metric: str  # "accuracy" or "nll"
    num_parameters: int | None = None  # None: any budget
    dropout: bool | None = None  # None: any; True: only settings with dropout; False: none

    def counts(self, settings: Settings) -> bool:
        if self.num_parameters is not None and settings.num_parameters != self.num_parameters:
            return False
        if self.dropout is None:
            return True
        return (settings.dropout > 0) == self.dropout

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "nll"


@dataclass(frozen=True)
class Table:
    number: int
    title: str
    columns: tuple[Column, ...]
    paper: dict[str, tuple[float, ...]]  # cell -> the paper's numbers, in column order
    schedule: str  # the training schedule of its evaluations (§3.6)


TABLE_1 = Table(
    1,
    "Best next-step-prediction accuracies (validation; search schedule)",
    (
        Column("Arith.", "arith", "valid", "accuracy"),
        Column("XML", "xml", "valid", "accuracy"),
        Column("PTB", "ptb", "valid", "accuracy"),
    ),
    {
        "tanh": (0.29493, 0.32050, 0.08782),
        "lstm": (0.89228, 0.42470, 0.08912),
        "lstm-f": (0.29292, 0.23356, 0.08808),
        "lstm-i": (0.75109, 0.41371, 0.08662),
        "lstm-o": (0.86747, 0.42117, 0.08933),
        "lstm-b": (0.90163, 0.44434, 0.08952),
        "gru": (0.89565, 0.45963, 0.09069),
        "mut1": (0.92135, 0.47483, 0.08968),
        "mut2": (0.89735, 0.47324, 0.09036),
        "mut3": (0.90728, 0.46478, 0.09161),
    },
    "search",
)

TABLE_2 = Table(
    2,
    "Negative log-likelihood on the music datasets (test; music schedule)",
    (
        Column("N", "nottingham", "test", "nll", dropout=False),
        Column("N-dropout", "nottingham", "test", "nll", dropout=True),
        Column("P", "piano-midi", "test", "nll", dropout=False),
    ),
    {
        "tanh": (3.612, 3.267, 6.809),
        "lstm": (3.492, 3.403, 6.866),
        "lstm-f": (3.732, 3.420, 6.813),
        "lstm-i": (3.426, 3.252, 6.856),
        "lstm-o": (3.406, 3.253, 6.870),
        "lstm-b": (3.419, 3.345, 6.820),
        "gru": (3.410, 3.427, 6.876),
        "mut1": (3.254, 3.376, 6.792),
        "mut2": (3.372, 3.429, 6.852),
        "mut3": (3.337, 3.505, 6.840),
    },
    "music",
)

TABLE_3 = Table(
    3,
    "PTB negative log-likelihood (PTB schedule; dropout only at 10M and 20M)",
    (
        Column("5M-tst", "ptb", "test", "nll", num_parameters=5_000_000, dropout=False),
        Column("10M-v", "ptb", "valid", "nll", num_parameters=10_000_000),
        Column("20M-v", "ptb", "valid", "nll", num_parameters=20_000_000),
        Column("20M-tst", "ptb", "test", "nll", num_parameters=20_000_000),
    ),
    {
        "tanh": (4.811, 4.729, 4.635, 4.582),
        "lstm": (4.699, 4.511, 4.437, 4.399),
        "lstm-f": (4.785, 4.752, 4.658, 4.606),
        "lstm-i": (4.755, 4.558, 4.480, 4.444),
        "lstm-o": (4.708, 4.496, 4.447, 4.411),
        "lstm-b": (4.698, 4.437, 4.423, 4.380),
        "gru": (4.684, 4.554, 4.559, 4.519),
        "mut1": (4.699, 4.605, 4.594, 4.550),
        "mut2": (4.707, 4.539, 4.538, 4.503),
        "mut3": (4.692, 4.523, 4.530, 4.494),
    },
    "ptb",
)

TABLES = {table.number: table for table in (TABLE_1, TABLE_2, TABLE_3)}
