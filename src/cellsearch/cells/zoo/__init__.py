"""The paper's cells, one equation file each (`<name>.cell`), as the paper's authors trained them.

tanh, lstm, lstm-f, lstm-i, lstm-o, lstm-b (§2, §4), gru (§2.3), mut1, mut2, mut3 (§4): the cells
of the paper's tables (`PAPER_CELLS`). The LSTMs have a sigmoid output gate where §2 prints a tanh;
`lstm-as-printed` is §2's text to the letter (docs/fidelity.md).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from cellsearch.cells.equations import parse, parse_file
from cellsearch.cells.graph import CellGraph
from cellsearch.errors import UserError

# The rows of the paper's Tables 1-3, in their order.
PAPER_CELLS = (
    "tanh", "lstm", "lstm-f", "lstm-i", "lstm-o", "lstm-b", "gru", "mut1", "mut2", "mut3"
)


def names() -> tuple[str, ...]:
    """The zoo's cell names: the paper's tables' cells in their order, then `lstm-as-printed`."""
    return (*PAPER_CELLS, "lstm-as-printed")


def source(name: str) -> str:
    """The equation text of a zoo cell."""
    if name not in names():
        raise UserError(f"unknown cell {name!r}; the zoo has: {', '.join(names())}")
    return resources.files(__package__).joinpath(f"{name}.cell").read_text(encoding="utf-8")


@cache
def get(name: str) -> CellGraph:
    """The zoo cell `name` as a graph."""
    return parse(source(name))


def resolve(name_or_path: str) -> CellGraph:
    """A zoo name, or the path of an equation (`.cell`) or JSON graph (`.json`) file."""
    if name_or_path in names():
        return get(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(
            f"unknown cell {name_or_path!r}: neither a zoo cell ({', '.join(names())}) "
            "nor an existing file"
        )
    if path.suffix == ".json":
        try:
            return CellGraph.from_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read cell file {path}: {error}") from None
        except UserError as error:
            raise UserError(f"{path}: {error}") from None
    return parse_file(path)
