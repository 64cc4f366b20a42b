"""cellsearch: search for and evaluate recurrent cell architectures.

Implements Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent Network
Architectures" (ICML 2015). The pipeline: equations text -> CellGraph -> compiled torch module ->
training on a task -> results in storage -> the evolutionary search and its reports.
"""

__version__ = "0.1.0"


def cache_directory():
    """Where cellsearch keeps what it can rebuild: generated kernels, the bench's reference
    figure ($XDG_CACHE_HOME/cellsearch, else ~/.cache/cellsearch)."""
    import os
    from pathlib import Path

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cellsearch"
