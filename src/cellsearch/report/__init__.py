"""Reports of stored runs and reproductions of the paper's tables.

    paper       the paper's Tables 1-3: their numbers and how each column is computed
    reproduce   `cellsearch reproduce`: the zoo through a table's evaluations, resumable
    tables      a database's report as plain values (`build_report`)
    render      a report as text or Markdown
    plots       a report's figures as PNG files (matplotlib)
"""
