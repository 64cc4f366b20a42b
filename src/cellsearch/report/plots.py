"""A report's figures as PNG files (matplotlib, without a display).

- `best-fitness.png` (a search): the top list's best fitness after each step;
- `table-N.png` (every table with values): for each column, every counted setting's value per
  cell, the best marked, and the paper's number beside it;
- `curves-table-N.png`: per column, the learning curve (validation metric per epoch) of each
  cell's best setting;
- `learning_curves` draws any list of Results' curves (`cellsearch evaluate --plot DIR`).
"""

from __future__ import annotations

import math
from pathlib import Path

from cellsearch.report.tables import Report
from cellsearch.storage.base import Storage


def write_plots(report: Report, storage: Storage, folder: str | Path) -> list[Path]:
    """Write the report's figures into `folder` (created if missing); the files written."""
    plt = pyplot()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if report.best_fitness:
        figure, axes = plt.subplots(figsize=(7, 4))
        steps, fitness = zip(*report.best_fitness)
        axes.plot(steps, [value if math.isfinite(value) else float("nan") for value in fitness])
        axes.set(xlabel="step", ylabel="best fitness (eq. 1)",
                 title=f"Search run {report.run_id}: the top list's best")
        axes.grid(alpha=0.3)
        written.append(_save(figure, folder / "best-fitness.png"))
    evaluations = storage.get_evaluations(report.run_id)
    for table_report in report.tables:
        table = table_report.table
        # the columns with evaluations (a reproduction may fill only some)
        shown = [i for i, _ in enumerate(table.columns)
                 if any(row.entries[i].settings for row in table_report.rows)]
        columns = [table.columns[i] for i in shown]
        figure, axes_row = plt.subplots(1, len(columns), figsize=(4 * len(columns), 4.5),
                                        squeeze=False)
        labels = [row.label for row in table_report.rows]
        for axes, column, index in zip(axes_row[0], columns, shown):
            for position, row in enumerate(table_report.rows):
                values = [
                    (record.result.valid if column.split == "valid" else record.result.test)
                    .get(column.metric, math.nan)
                    for record in evaluations
                    if record.architecture_hash == row.architecture_hash
                    and record.task == column.task
                    and column.counts(record.result.settings)
                    and (report.kind == "search" or record.step == table.number)
                ]
                values = [value for value in values if math.isfinite(value)]
                axes.scatter([position] * len(values), values, s=10, alpha=0.5, color="tab:blue")
                entry = row.entries[index]
                if math.isfinite(entry.value):
                    axes.scatter([position], [entry.value], marker="_", s=300, color="tab:blue")
                if entry.paper is not None:
                    axes.scatter([position], [entry.paper], marker="x", color="tab:red")
            axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
            axes.set_title(f"{column.name} ({column.split} {column.metric})")
            axes.grid(alpha=0.3)
        figure.suptitle(f"Table {table.number}: dots ours per setting, bar our best, x the paper")
        written.append(_save(figure, folder / f"table-{table.number}.png"))

        best = {(row.label, column.name): row.entries[index].settings_key
                for row in table_report.rows for column, index in zip(columns, shown)}
        figure, axes_row = plt.subplots(1, len(columns), figsize=(4 * len(columns), 4),
                                        squeeze=False)
        for axes, column in zip(axes_row[0], columns):
            for row in table_report.rows:
                for record in evaluations:
                    if (record.architecture_hash == row.architecture_hash
                            and record.task == column.task
                            and record.settings_key == best[row.label, column.name]):
                        _curve(axes, record.result, column.metric, row.label)
            axes.set(title=f"{column.name}: each cell's best setting", xlabel="epoch",
                     ylabel=f"validation {column.metric}")
            axes.grid(alpha=0.3)
            axes.legend(fontsize="x-small")
        written.append(_save(figure, folder / f"curves-table-{table.number}.png"))
    return written


def learning_curves(results, path: str | Path, title: str) -> Path:
    """One PNG of the validation metric and nll per epoch of each of `results`."""
    plt = pyplot()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metric = results[0].metric if results else "accuracy"
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        s = result.settings
        label = f"lr {s.learning_rate:g}, init {s.init_scale:g}, clip {s.max_grad_norm:g}, " \
                f"{s.num_layers} layers ({result.status})"
        _curve(left, result, metric, label)
        _curve(right, result, "nll", label)
    left.set(xlabel="epoch", ylabel=f"validation {metric}", title=title)
    right.set(xlabel="epoch", ylabel="validation nll")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    left.legend(fontsize="x-small")
    return _save(figure, path)


def _curve(axes, result, metric: str, label: str) -> None:
    epochs = [entry["epoch"] for entry in result.history]
    values = [entry.get(metric, math.nan) for entry in result.history]
    if epochs:
        axes.plot(epochs, values, marker=".", label=label)


def pyplot():
    """matplotlib's pyplot drawing into files (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = pyplot()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
