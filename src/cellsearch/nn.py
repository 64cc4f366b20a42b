"""The public modules for compiled cells (see `cellsearch.engine.nn`): `Cell` and `RNN` for one
model, `PopulationCell` for K independent models trained at once."""

from cellsearch.engine.nn import RNN, Cell, PopulationCell

__all__ = ["RNN", "Cell", "PopulationCell"]
