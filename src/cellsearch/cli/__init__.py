"""The `cellsearch` command: a thin argparse layer over importable functions.

Each command group lives in its own module with a `register(subparsers)` function that adds its
parsers and sets `run` to the function doing the work. User errors (`UserError`) become one line on
stderr and exit code 2; nothing here holds logic worth testing apart from the functions it calls.
"""

from __future__ import annotations

import argparse
import sys

from cellsearch.errors import UserError

# Command modules, in the order `cellsearch --help` lists them.
_COMMAND_MODULES = ("cells", "data", "evaluate", "search", "report", "bench")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="cellsearch",
        description="Search for and evaluate recurrent cell architectures "
        "(Jozefowicz, Zaremba & Sutskever, ICML 2015).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"cellsearch.cli.{name}").register(subparsers)
    return parser


MAX_LINE, MAX_LINES = 2000, 40  # an error message quoting a huge input stays readable


def readable(message: str) -> str:
    """`message` with each line cut to MAX_LINE characters and at most MAX_LINES lines."""
    lines = [line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"
             for line in message.splitlines() or [""]]
    if len(lines) > MAX_LINES:
        lines = [*lines[:MAX_LINES], f"({len(lines) - MAX_LINES} more problems)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except UserError as error:
        print(f"cellsearch: error: {readable(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `cellsearch data sample xml | head`
        return 0
