"""A `Report` as text for a terminal or a log, or as Markdown: tables in the paper's shape, each
entry "ours (paper)", then a search's statistics, funnel and task correlations."""

from __future__ import annotations

import math

from cellsearch.report.tables import Entry, Report, TableReport


def render(report: Report, markdown: bool = False) -> str:
    parts = [_heading(f"cellsearch report: {report.kind} run {report.run_id}", 1, markdown)]
    if not report.tables:
        parts.append("No evaluations of any table's columns yet.\n")
    for table in report.tables:
        parts.append(_table(table, markdown))
    if report.statistics is not None:
        figures = report.statistics
        rows = [
            ("steps completed", figures.steps_completed),
            ("candidates evaluated", figures.architectures_evaluated),
            ("passed the memorization filter", figures.passed_filter),
            ("settings per architecture that passed",
             _number(figures.settings_per_architecture, 1)),
            ("evaluations", figures.total_evaluations),
            ("failed or diverged evaluations", figures.failed_evaluations),
        ]
        parts.append(_heading("The search (§3.4)", 2, markdown) + _pairs(rows, markdown))
    if report.funnel is not None:
        funnel = report.funnel
        rows = [
            ("proposed (new candidates)", funnel.proposed),
            ("failed the memorization filter", funnel.failed_filter),
            ("passed the memorization filter", funnel.passed_filter),
            *((f"passed {task} (and every task before)", count)
              for task, count in funnel.passed_tasks),
            ("entered the top list", funnel.entered_top),
        ]
        parts.append(_heading("Funnel", 2, markdown) + _pairs(rows, markdown))
    if report.correlations:
        rows = [(f"{a} / {b}", f"{_number(rho, 3)} over {n} architectures")
                for a, b, rho, n in report.correlations]
        parts.append(_heading("Rank correlation of best accuracy between tasks (Spearman)", 2,
                              markdown) + _pairs(rows, markdown))
    return "\n".join(parts)


def _heading(text: str, level: int, markdown: bool) -> str:
    if markdown:
        return f"{'#' * level} {text}\n"
    return f"{text}\n{('=' if level == 1 else '-') * len(text)}\n"


def _table(report: TableReport, markdown: bool) -> str:
    table = report.table
    header = ["cell", *(column.name for column in table.columns)]
    rows = [[row.label, *(_entry(entry) for entry in row.entries)] for row in report.rows]
    title = _heading(f"Table {table.number}: {table.title}", 2, markdown)
    note = ("Each entry: ours (the paper's), [settings evaluated]; ours is the best of those"
            " settings, chosen by validation.\n")
    return title + note + "\n" + text_table(header, rows, markdown)


def _entry(entry: Entry) -> str:
    digits = 5 if entry.paper is not None and entry.paper < 1 else 3
    ours = _number(entry.value, digits)
    paper = f" ({entry.paper:.{digits}f})" if entry.paper is not None else ""
    return f"{ours}{paper} [{entry.settings}]"


def text_table(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """Rows under a header, as aligned plain text (nothing cut, for logs) or Markdown."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip()
             for line in [header, *rows]]
    return "\n".join(lines) + "\n"


def _pairs(rows: list[tuple[str, object]], markdown: bool) -> str:
    cells = [[label, str(value)] for label, value in rows]
    if markdown:
        return text_table(["figure", "value"], cells, True)
    width = max(len(label) for label, _ in cells)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in cells) + "\n"


def _number(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
