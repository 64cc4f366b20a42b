"""Every option and argument of every command says what it is for in `--help` (issue 18: a user
learns the options from the help, not from the error for a wrong one)."""

import argparse

from cellsearch.cli import build_parser


def commands(parser: argparse.ArgumentParser, path=()):
    """(command path, its parser) for every command and subcommand."""
    for action in parser._actions:  # argparse keeps its subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def test_every_option_and_argument_of_every_command_has_its_help():
    undocumented = [
        f"cellsearch {' '.join(path)} {(action.option_strings or [action.dest])[-1]}"
        for path, parser in commands(build_parser())
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not action.help
    ]
    assert not undocumented, undocumented


def test_the_walk_finds_the_commands():  # (else the test above could pass on nothing)
    found = {" ".join(path) for path, _ in commands(build_parser())}
    assert {"search", "evaluate", "reproduce", "report", "bench", "cells show"} <= found
