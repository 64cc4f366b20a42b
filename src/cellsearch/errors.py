"""The one exception type for bad user input: the CLI prints it as one line and exits with 2."""

from typing import Any, Callable


class UserError(Exception):
    """Bad input from a user (a malformed equation, an unknown name, a missing file, a bad value).

    The message must say what was wrong and, where it helps, how to fix it.
    """


def quoted(value: Any, limit: int = 60) -> str:
    """`value`'s repr for an error message, cut to `limit` characters: a message quoting a
    user's input stays one readable line however large the input."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply, or an int of too many digits
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gathered(problems: list[str], function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, or None with its UserError's message added to `problems`: for checks
    that report every problem at once."""
    try:
        return function(*args)
    except UserError as error:
        problems.append(str(error))
        return None
